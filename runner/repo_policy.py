"""Which repositories the host may contact for a routine: the pure half of the fetch policy.

A routine's repository URL is typed by a Slack user, and the host clones it (and pushes a
publishing run's commit to it), so the URL is a request the host makes on that user's
behalf. The rules, pure and shared by both places that apply them:

- when a routine is saved, `bot.core.routine` refuses what the URL alone shows (`check`);
- before each clone and push, `runner.host.fetch_policy` checks the URL again (the routine
  may predate the settings), resolves the host, checks every address (`address_kind`) and
  pins git's connection to them.

The transports are https, ssh (`ssh://` or `user@host:path`) and, only with
`FetchPolicy.allow_local` (`ROUTINES_ALLOW_LOCAL_REPOS`), local paths and `file://`. A
remote host must be a plain ASCII host name (international names in punycode, `xn--`),
never an IP address in any spelling (`10.0.0.1`, `[::1]`, `2130706433`, `0x7f.1`), and
one of `FetchPolicy.hosts` (`ROUTINES_REPO_HOSTS`): exact names, `*.domain` (any name
below the domain, not the domain itself) or `*` (any name). Names compare without case
and without a final dot. Standard library only: the bot's core imports it too.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

DEFAULT_REPO_HOSTS = ("github.com", "gitlab.com", "bitbucket.org", "codeberg.org")
HOSTS_SETTING = "ROUTINES_REPO_HOSTS"
LOCAL_SETTING = "ROUTINES_ALLOW_LOCAL_REPOS"
DEFAULT_PORTS = {"https": 443, "ssh": 22}

Transport = Literal["https", "ssh", "local"]


class Reason(StrEnum):
    """Why a repository location is refused."""

    UNSUPPORTED = "unsupported"  # not https://, ssh://, user@host:path, nor a local path
    LOCAL_DISABLED = "local_disabled"  # a local path, and local repositories are off
    INVALID_HOST = "invalid_host"  # not a plain ASCII host name
    IP_LITERAL = "ip_literal"  # an IP address in any spelling, instead of a name
    NOT_ALLOWED = "not_allowed"  # a name outside `FetchPolicy.hosts`
    UNRESOLVED = "unresolved"  # the name resolves to no address
    PRIVATE_ADDRESS = "private_address"  # the name resolves to a non-public address


class AddressKind(StrEnum):
    """Why an address is not public (`address_kind`)."""

    METADATA = "metadata"  # the cloud instance metadata service
    UNSPECIFIED = "unspecified"
    LOOPBACK = "loopback"
    LINK_LOCAL = "link_local"
    PRIVATE = "private"  # RFC 1918, shared (CGNAT) and unique-local (fc00::/7) space
    MULTICAST = "multicast"
    RESERVED = "reserved"  # documentation, benchmarking, future use and the rest

    @property
    def phrase(self) -> str:
        return _KIND_PHRASES[self]


_KIND_PHRASES = {
    AddressKind.METADATA: "the cloud metadata address",
    AddressKind.UNSPECIFIED: "the unspecified address",
    AddressKind.LOOPBACK: "a loopback address",
    AddressKind.LINK_LOCAL: "a link-local address",
    AddressKind.PRIVATE: "a private address",
    AddressKind.MULTICAST: "a multicast address",
    AddressKind.RESERVED: "a reserved, non-public address",
}


@dataclass(frozen=True)
class Refusal:
    """A location the policy refuses, and the facts of why."""

    reason: Reason
    host: str = ""
    address: str = ""  # PRIVATE_ADDRESS: the address that was refused
    kind: AddressKind | None = None  # PRIVATE_ADDRESS: what that address is

    def words(self, code: Callable[[str], str] = str) -> str:
        """Why, as a clause (`code` marks names, as a door's style does)."""
        host = code(self.host)
        if self.reason is Reason.LOCAL_DISABLED:
            return f"local repositories are disabled on this bot ({code(LOCAL_SETTING)})"
        if self.reason is Reason.INVALID_HOST:
            return (f"{host} is not a plain host name (write international names in "
                    "punycode, xn--...)")
        if self.reason is Reason.IP_LITERAL:
            return f"{host} is an IP address; name the host instead"
        if self.reason is Reason.NOT_ALLOWED:
            return f"{host} is not one of the allowed repository hosts ({code(HOSTS_SETTING)})"
        if self.reason is Reason.UNRESOLVED:
            return f"{host} could not be resolved"
        if self.reason is Reason.PRIVATE_ADDRESS:
            kind = self.kind.phrase if self.kind else "a non-public address"
            return f"{host} resolves to {code(self.address)}, {kind}"
        return "its transport is not allowed: use https://, ssh:// or user@host:path"


@dataclass(frozen=True)
class FetchPolicy:
    """The host-side settings that decide which repositories may be contacted."""

    hosts: tuple[str, ...] = DEFAULT_REPO_HOSTS  # as `parse_hosts` returns them
    allow_local: bool = False


@dataclass(frozen=True)
class Location:
    """An accepted repository location. `url` is what git is given: the URL as typed,
    but for an https host written in its normal form (lower case, no final dot), so the
    name git's resolver is told about (`runner.host.fetch_policy`) is the one it asks for."""

    transport: Transport
    url: str
    host: str = ""
    port: int | None = None  # None: the transport's default

    @property
    def effective_port(self) -> int:
        return self.port if self.port is not None else DEFAULT_PORTS.get(self.transport, 0)


_TRANSPORT_SYNTAX = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*::")  # git's <transport>::<address>
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# `[user@]host[:port]`: '@', '/', '\' and brackets are never part of a user or a name,
# so no two parsers can disagree on where the host is.
_AUTHORITY = re.compile(r"(?:(?P<user>[^@/\\?#\[\]\s]*)@)?"
                        r"(?P<host>\[[^\]/\\@\s]*\]|[^:/\\?#@\[\]\s]*)"
                        r"(?::(?P<port>[0-9]{1,5}))?")
# scp-like `[user@]host:path`, as git reads it: the first ':' ends the host.
_SCP = re.compile(r"(?:(?P<user>[^@/\\:\[\]\s]+)@)?(?P<host>\[[^\]]*\]|[^@/\\:\[\]\s]+):"
                  r"(?P<path>.*)", re.S)
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# The WHATWG URL rule: a host whose last label is a number is an IPv4 address (inet_aton
# reads `127.1`, `2130706433`, `0x7f.1` and `0177.0.0.1` as 127.0.0.1).
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check(url: str, policy: FetchPolicy) -> Location | Refusal:
    """Whether the URL alone is acceptable: its transport, its host's spelling and the
    allowed hosts. No resolution: the addresses are `runner.host.fetch_policy`'s."""
    located = locate(url)
    if isinstance(located, Refusal):
        return located
    if located.transport == "local":
        return located if policy.allow_local else Refusal(Reason.LOCAL_DISABLED)
    if not host_allowed(located.host, policy.hosts):
        return Refusal(Reason.NOT_ALLOWED, located.host)
    return located


def locate(url: str) -> Location | Refusal:
    """Parse a repository URL as git would, or say why it is not one this bot accepts."""
    if not url or _CONTROL.search(url) or _TRANSPORT_SYNTAX.match(url):
        return Refusal(Reason.UNSUPPORTED)
    scheme = _SCHEME.match(url)
    if scheme:
        name = scheme.group(1).lower()
        if name == "file":
            return Location("local", url)
        if name not in ("https", "ssh"):
            return Refusal(Reason.UNSUPPORTED)
        return _remote(url, "https" if name == "https" else "ssh", url[scheme.end():])
    if url.startswith("/"):
        return Location("local", url)
    scp = _SCP.fullmatch(url)
    if scp is None:  # a relative path, an option, or something else
        return Refusal(Reason.UNSUPPORTED)
    host = normal_host(scp.group("host"))
    if isinstance(host, Refusal):
        return host
    return Location("ssh", url, host)


def _remote(url: str, transport: Transport, rest: str) -> Location | Refusal:
    """`rest`: what follows `scheme://`, i.e. the authority, then a path from '/'."""
    if "\\" in rest:
        return Refusal(Reason.UNSUPPORTED)
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    path = rest[len(authority):]
    parts = _AUTHORITY.fullmatch(authority)
    if parts is None or not path.startswith("/"):
        return Refusal(Reason.UNSUPPORTED)
    host = normal_host(parts.group("host"))
    if isinstance(host, Refusal):
        return host
    port = int(parts.group("port")) if parts.group("port") else None
    if port is not None and not 0 < port < 65536:
        return Refusal(Reason.UNSUPPORTED)
    if transport != "https":
        return Location(transport, url, host, port)
    user = f"{parts.group('user')}@" if parts.group("user") is not None else ""
    netloc = f"{user}{host}" + (f":{port}" if port is not None else "")
    return Location(transport, f"https://{netloc}{path}", host, port)


def normal_host(raw: str) -> str | Refusal:
    """A host name in its normal form (lower case, no final dot), or why it is not one.

    Checked for ASCII before lowering: some non-ASCII letters lower to ASCII ones
    (the Kelvin sign to `k`), which would let a look-alike pass for an allowed name."""
    if raw.startswith("["):
        return Refusal(Reason.IP_LITERAL, raw)
    if not raw.isascii():
        return Refusal(Reason.INVALID_HOST, raw)
    host = raw.lower()
    host = host[:-1] if host.endswith(".") else host
    if len(host) > 253 or not _HOST_NAME.fullmatch(host):
        return Refusal(Reason.INVALID_HOST, raw)
    if _NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1]):
        return Refusal(Reason.IP_LITERAL, raw)
    return host


def host_allowed(host: str, patterns: Iterable[str]) -> bool:
    """Whether a normal-form host name matches one of the patterns (`parse_hosts`)."""
    for pattern in patterns:
        if pattern == "*" or host == pattern:
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
    return False


def parse_hosts(raw: str) -> tuple[str, ...]:
    """`ROUTINES_REPO_HOSTS`: comma-separated names, `*.domain` patterns or `*`, in their
    normal form; blank: the default. `ValueError` names every entry that is not one."""
    entries = [entry.strip() for entry in raw.split(",") if entry.strip()]
    if not entries:
        return DEFAULT_REPO_HOSTS
    patterns: list[str] = []
    bad: list[str] = []
    for entry in entries:
        if entry == "*":
            patterns.append(entry)
            continue
        wildcard = entry.startswith("*.")
        host = normal_host(entry[2:] if wildcard else entry)
        if isinstance(host, Refusal):
            bad.append(entry)
        else:
            patterns.append(f"*.{host}" if wildcard else host)
    if bad:
        raise ValueError(f"not a host name, *.domain or *: {', '.join(bad)} (IP addresses "
                         "are never allowed)")
    return tuple(dict.fromkeys(patterns))


# Beyond what `ipaddress` calls private or reserved (which varies between Python
# versions): ranges no repository host is ever at.
_PRIVATE_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",  # RFC 1918, CGNAT
    "fc00::/7", "fec0::/10",  # unique-local, deprecated site-local
))
_RESERVED_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "198.18.0.0/15",
    "198.51.100.0/24", "203.0.113.0/24", "240.0.0.0/4", "255.255.255.255/32",
    "::/8", "100::/64", "2001::/23", "2001:db8::/32", "2002::/16", "3fff::/20",
    "64:ff9b:1::/48",
))
_METADATA = frozenset(ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254"))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the well-known prefix: IPv4 inside


def address_kind(address: str) -> AddressKind | None:
    """What a resolved address is, or None for a public one. An IPv4 address inside an
    IPv6 one (mapped `::ffff:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`) is judged as itself;
    anything that does not parse counts as reserved."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # a zone is not the address
    except ValueError:
        return AddressKind.RESERVED
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ip.ipv4_mapped or (
            ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None)
        if inner is not None:
            return address_kind(str(inner))
    if ip in _METADATA:
        return AddressKind.METADATA
    checks: list[tuple[bool, AddressKind]] = [
        (ip.is_unspecified, AddressKind.UNSPECIFIED),
        (ip.is_loopback, AddressKind.LOOPBACK),
        (ip.is_link_local, AddressKind.LINK_LOCAL),
        (any(ip in net for net in _PRIVATE_NETWORKS), AddressKind.PRIVATE),
        (ip.is_multicast, AddressKind.MULTICAST),
        (ip.is_reserved or ip.is_private or not ip.is_global
         or any(ip in net for net in _RESERVED_NETWORKS), AddressKind.RESERVED),
    ]
    return next((kind for failed, kind in checks if failed), None)


def check_addresses(host: str, addresses: Iterable[str]) -> Refusal | None:
    """None when `host` resolved to at least one address and every one is public."""
    found = list(addresses)
    if not found:
        return Refusal(Reason.UNRESOLVED, host)
    for address in found:
        kind = address_kind(address)
        if kind is not None:
            return Refusal(Reason.PRIVATE_ADDRESS, host, address, kind)
    return None
