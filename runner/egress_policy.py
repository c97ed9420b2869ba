"""Where a run's container may connect: the pure half of the egress policy.

A run's container has no route and no DNS of its own; its only way out is the host's
HTTP proxy (`runner.host.egress_proxy`), which asks this module whether a host is
allowed. Per routine, the network setting is one of (`NetworkMode`):

- `trusted` (the default): the operator's list, `ROUTINES_TRUSTED_HOSTS`, by default the
  common package registries and GitHub (`DEFAULT_TRUSTED_HOSTS`);
- `none`: nothing at all;
- a custom list of host names and `*.domain` patterns (`custom`);
- `full`: any host (only an admin may set it; the bot audits it).

Patterns: an exact name (`pypi.org`) or `*.domain` (`*.example.com` matches
`a.example.com` and `a.b.example.com`, NOT `example.com` itself: list both when both
are wanted). Names compare without case and without a final dot. A pattern has no
scheme, path or port (any port of an allowed host is allowed: a registry on 8443 is
still that registry), and is never an IP address: addresses are for the proxy's own
check, which refuses loopback, link-local (the cloud metadata address among them),
unspecified, multicast and reserved destinations whatever the mode, even `full`.

Standard library only: the bot's core (validation at save time) imports it, and so does
the host's proxy, so both apply one rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from runner.repo_policy import AddressKind, Reason, Refusal, address_kind, normal_host

TRUSTED_SETTING = "ROUTINES_TRUSTED_HOSTS"
EGRESS_EVENT = "egress"  # the host event type of one attempt (`runner.contract.HOST_EVENT_TYPES`)

DEFAULT_TRUSTED_HOSTS = (
    # Python: PyPI and its files
    "pypi.org", "files.pythonhosted.org",
    # JavaScript: npm and Yarn's mirror of it
    "registry.npmjs.org", "registry.yarnpkg.com",
    # Rust: crates.io's index and downloads
    "crates.io", "index.crates.io", "static.crates.io",
    # Go: the module proxy and checksum database
    "proxy.golang.org", "sum.golang.org",
    # Ruby and Java
    "rubygems.org", "repo.maven.apache.org", "repo1.maven.org",
    # Debian packages (apt in a setup script)
    "deb.debian.org", "security.debian.org",
    # GitHub: the site, archives, raw files and release assets
    "github.com", "api.github.com", "codeload.github.com", "objects.githubusercontent.com",
    "raw.githubusercontent.com", "*.githubusercontent.com",
)


class NetworkMode(StrEnum):
    """A routine's network setting (see the module's docstring)."""

    TRUSTED = "trusted"
    NONE = "none"
    CUSTOM = "custom"
    FULL = "full"


class DenyReason(StrEnum):
    """Why the proxy refused an attempt (the `x-deny-reason` header and the event)."""

    HOST_NOT_ALLOWED = "host_not_allowed"  # the policy does not list the host
    ADDRESS_NOT_ALLOWED = "address_not_allowed"  # it resolves to loopback, link-local...
    BAD_REQUEST = "bad_request"  # not a proxy request this proxy understands


class PatternProblem(StrEnum):
    """Why a typed entry is not a host pattern."""

    SCHEME = "scheme"  # https://pypi.org
    PATH = "path"  # pypi.org/simple
    PORT = "port"  # pypi.org:443
    IP_LITERAL = "ip_literal"  # 10.0.0.1, [::1]
    WILDCARD = "wildcard"  # `*`, `*foo.com`, `a.*.com`
    INVALID = "invalid"  # anything else that is not a host name

    @property
    def phrase(self) -> str:
        return _PROBLEM_PHRASES[self]


_PROBLEM_PHRASES = {
    PatternProblem.SCHEME: "write the host alone, without a scheme",
    PatternProblem.PATH: "write the host alone, without a path",
    PatternProblem.PORT: "write the host without a port (every port of an allowed host is "
                         "allowed)",
    PatternProblem.IP_LITERAL: "name the host instead of an IP address",
    PatternProblem.WILDCARD: "a wildcard is only `*.domain` (for everything, ask an admin "
                             "for network=full)",
    PatternProblem.INVALID: "not a host name",
}


@dataclass(frozen=True)
class BadPattern:
    """One typed entry that is not a host pattern, and why."""

    entry: str
    problem: PatternProblem

    def words(self) -> str:
        return f"{self.entry}: {self.problem.phrase}"


class PolicyError(ValueError):
    """What the user typed is not a network setting; `bad` lists every wrong entry."""

    def __init__(self, bad: tuple[BadPattern, ...], empty: bool = False) -> None:
        self.bad, self.empty = bad, empty
        super().__init__(self.words())

    def words(self) -> str:
        if self.empty:
            return "use trusted, none, full, or a list of hosts and *.domain patterns"
        return "; ".join(b.words() for b in self.bad)


@dataclass(frozen=True)
class EgressPolicy:
    """A run's egress policy: the mode and, for `trusted` and `custom`, the patterns.

    A stored routine keeps `trusted` without its list (`hosts` empty): the operator's
    list is the one in force when the run starts (`with_trusted`)."""

    mode: NetworkMode = NetworkMode.NONE
    hosts: tuple[str, ...] = ()

    def allows(self, host: str) -> bool:
        """Whether the policy lets a run reach `host` (a name or an address, as a client
        wrote it). Addresses are the proxy's concern, not this: see `address_refusal`."""
        if self.mode is NetworkMode.FULL:
            return True
        if self.mode is NetworkMode.NONE:
            return False
        name = normal_host(host.strip("[]"))
        return isinstance(name, str) and matches(name, self.hosts)

    def with_trusted(self, trusted: tuple[str, ...]) -> EgressPolicy:
        """The policy in force for a run: `trusted` gets the operator's list."""
        if self.mode is NetworkMode.TRUSTED:
            return EgressPolicy(NetworkMode.TRUSTED, trusted)
        return self

    def describe(self) -> str:
        """As a user would type it: `trusted`, `none`, `full` or the list."""
        if self.mode is NetworkMode.CUSTOM:
            return ", ".join(self.hosts)
        return self.mode.value

    def to_spec(self) -> str:
        """One line for `RunSpec.egress`: `mode` or `mode:pattern,pattern`."""
        return f"{self.mode.value}:{','.join(self.hosts)}" if self.hosts else self.mode.value

    @classmethod
    def from_spec(cls, text: str) -> EgressPolicy:
        """Read `to_spec`'s line. Anything unreadable is `none`: the safe reading."""
        mode, _, hosts = text.partition(":")
        try:
            return cls(NetworkMode(mode), parse_patterns(hosts) if hosts else ())
        except ValueError:
            return cls(NetworkMode.NONE)


def parse_network(text: str) -> EgressPolicy:
    """What a user typed in the form or in `network=`: `trusted`, `none`, `full`, or a
    comma- or space-separated list of patterns. `PolicyError` names every bad entry."""
    word = text.strip().lower()
    if word in {NetworkMode.TRUSTED, NetworkMode.NONE, NetworkMode.FULL}:
        return EgressPolicy(NetworkMode(word))
    hosts = parse_patterns(text)
    if not hosts:
        raise PolicyError((), empty=True)
    return EgressPolicy(NetworkMode.CUSTOM, hosts)


def parse_patterns(text: str) -> tuple[str, ...]:
    """Host names and `*.domain` patterns, comma- or space-separated, in normal form
    (lower case, no final dot), without duplicates; `PolicyError` names the bad ones."""
    patterns: list[str] = []
    bad: list[BadPattern] = []
    for entry in (e for e in re.split(r"[\s,]+", text.strip()) if e):
        pattern = normal_pattern(entry)
        if isinstance(pattern, BadPattern):
            bad.append(pattern)
        else:
            patterns.append(pattern)
    if bad:
        raise PolicyError(tuple(bad))
    return tuple(dict.fromkeys(patterns))


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_PORT = re.compile(r":[0-9]*$")


def normal_pattern(entry: str) -> str | BadPattern:
    """One entry in normal form, or why it is not a pattern."""
    if _SCHEME.match(entry):
        return BadPattern(entry, PatternProblem.SCHEME)
    if "/" in entry or "?" in entry or "#" in entry:
        return BadPattern(entry, PatternProblem.PATH)
    if entry.startswith("[") or entry.count(":") > 1:
        return BadPattern(entry, PatternProblem.IP_LITERAL)
    if _PORT.search(entry):
        return BadPattern(entry, PatternProblem.PORT)
    wildcard = entry.startswith("*.")
    rest = entry[2:] if wildcard else entry
    if "*" in rest:
        return BadPattern(entry, PatternProblem.WILDCARD)
    host = normal_host(rest)
    if isinstance(host, Refusal):
        problem = (PatternProblem.IP_LITERAL if host.reason is Reason.IP_LITERAL
                   else PatternProblem.INVALID)
        return BadPattern(entry, problem)
    if wildcard and "." not in host:
        return BadPattern(entry, PatternProblem.WILDCARD)  # `*.com`: a whole top-level domain
    return f"*.{host}" if wildcard else host


def matches(host: str, patterns: Iterable[str]) -> bool:
    """Whether a normal-form name matches a pattern: exactly, or below a `*.domain`."""
    for pattern in patterns:
        if host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])):
            return True
    return False


def parse_trusted(raw: str) -> tuple[str, ...]:
    """`ROUTINES_TRUSTED_HOSTS`: the patterns, replacing the default list; blank: the
    default. `PolicyError` names the bad entries."""
    return parse_patterns(raw) or DEFAULT_TRUSTED_HOSTS


# Whatever the policy: a destination at one of these is never connected to. Private
# (RFC 1918, unique-local) addresses are allowed: the name was allowed by the policy, and
# an operator's internal registry lives there.
REFUSED_ADDRESSES = frozenset({
    AddressKind.METADATA, AddressKind.UNSPECIFIED, AddressKind.LOOPBACK,
    AddressKind.LINK_LOCAL, AddressKind.MULTICAST, AddressKind.RESERVED,
})


def address_refusal(address: str) -> AddressKind | None:
    """What kind of refused address `address` is, or None when it may be connected to."""
    kind = address_kind(address)
    return kind if kind in REFUSED_ADDRESSES else None
