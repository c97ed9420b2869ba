"""The egress policy's pure rules: what a user may type, what a pattern matches, which
addresses are never connected to, and the line a run spec carries."""

from __future__ import annotations

import pytest

from runner.egress_policy import (
    DEFAULT_TRUSTED_HOSTS,
    EgressPolicy,
    NetworkMode,
    PatternProblem,
    PolicyError,
    address_refusal,
    parse_network,
    parse_trusted,
)
from runner.repo_policy import AddressKind


@pytest.mark.parametrize(("typed", "expected"), [
    ("trusted", EgressPolicy(NetworkMode.TRUSTED)),
    (" None ", EgressPolicy(NetworkMode.NONE)),
    ("FULL", EgressPolicy(NetworkMode.FULL)),
    ("pypi.org", EgressPolicy(NetworkMode.CUSTOM, ("pypi.org",))),
    ("PyPI.org., *.Example.com  internal.corp,pypi.org",
     EgressPolicy(NetworkMode.CUSTOM, ("pypi.org", "*.example.com", "internal.corp"))),
])
def test_what_a_user_types_becomes_a_policy(typed: str, expected: EgressPolicy) -> None:
    assert parse_network(typed) == expected


@pytest.mark.parametrize(("typed", "problem"), [
    ("https://pypi.org", PatternProblem.SCHEME),
    ("pypi.org/simple", PatternProblem.PATH),
    ("pypi.org:443", PatternProblem.PORT),
    ("10.0.0.1", PatternProblem.IP_LITERAL),
    ("[::1]", PatternProblem.IP_LITERAL),
    ("fe80::1", PatternProblem.IP_LITERAL),
    ("2130706433", PatternProblem.IP_LITERAL),
    ("*", PatternProblem.WILDCARD),
    ("*example.com", PatternProblem.WILDCARD),
    ("a.*.com", PatternProblem.WILDCARD),
    ("*.com", PatternProblem.WILDCARD),
    ("bad_host!", PatternProblem.INVALID),
    ("kelvin\u212a.com", PatternProblem.INVALID),  # the Kelvin sign lowers to `k`
])
def test_bad_entries_are_refused_with_their_problem(typed: str, problem: PatternProblem,
                                                    ) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_network(f"pypi.org, {typed}")
    assert [(b.entry, b.problem) for b in caught.value.bad] == [(typed, problem)]
    assert typed in str(caught.value)


def test_an_empty_setting_is_refused() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_network(" , ")
    assert caught.value.empty and "trusted, none, full" in str(caught.value)


@pytest.mark.parametrize(("host", "allowed"), [
    ("pypi.org", True),
    ("PYPI.ORG.", True),  # case and a final dot do not matter
    ("files.pypi.org", False),  # an exact name is not its subdomains
    ("a.example.com", True),
    ("a.b.example.com", True),
    ("example.com", False),  # `*.example.com` is below the domain, not the domain itself
    ("badexample.com", False),
    ("example.com.evil.org", False),
    ("10.0.0.1", False),  # an address never matches a name
    ("[::1]", False),
])
def test_custom_patterns_match_names(host: str, allowed: bool) -> None:
    policy = parse_network("pypi.org *.example.com")
    assert policy.allows(host) is allowed


def test_none_allows_nothing_and_full_everything() -> None:
    assert not EgressPolicy(NetworkMode.NONE).allows("pypi.org")
    assert EgressPolicy(NetworkMode.FULL).allows("anything.example")
    assert EgressPolicy(NetworkMode.FULL).allows("10.1.2.3")


def test_trusted_takes_the_operators_list_when_the_run_starts() -> None:
    stored = parse_network("trusted")
    assert not stored.allows("pypi.org")  # the stored routine keeps no list of its own
    in_force = stored.with_trusted(DEFAULT_TRUSTED_HOSTS)
    for host in ("pypi.org", "files.pythonhosted.org", "registry.npmjs.org", "github.com",
                 "codeload.github.com", "objects.githubusercontent.com",
                 "release-assets.githubusercontent.com", "static.crates.io",
                 "proxy.golang.org", "deb.debian.org"):
        assert in_force.allows(host), host
    assert not in_force.allows("example.com")
    assert parse_network("none").with_trusted(DEFAULT_TRUSTED_HOSTS) == parse_network("none")


def test_the_trusted_setting_replaces_the_default_list() -> None:
    assert parse_trusted("") == DEFAULT_TRUSTED_HOSTS
    assert parse_trusted("registry.corp, *.mirror.corp") == ("registry.corp", "*.mirror.corp")
    with pytest.raises(PolicyError):
        parse_trusted("https://registry.corp")


@pytest.mark.parametrize("policy", [
    EgressPolicy(NetworkMode.NONE),
    EgressPolicy(NetworkMode.FULL),
    EgressPolicy(NetworkMode.TRUSTED, DEFAULT_TRUSTED_HOSTS),
    EgressPolicy(NetworkMode.CUSTOM, ("pypi.org", "*.example.com")),
])
def test_the_spec_line_round_trips(policy: EgressPolicy) -> None:
    assert EgressPolicy.from_spec(policy.to_spec()) == policy


@pytest.mark.parametrize("line", ["", "open", "custom:https://x", "full:10.0.0.1"])
def test_an_unreadable_spec_line_is_none(line: str) -> None:
    assert EgressPolicy.from_spec(line) == EgressPolicy(NetworkMode.NONE)


def test_describe_says_it_as_typed() -> None:
    assert parse_network("trusted").describe() == "trusted"
    assert parse_network("a.org *.b.org").describe() == "a.org, *.b.org"


@pytest.mark.parametrize(("address", "kind"), [
    ("127.0.0.1", AddressKind.LOOPBACK),
    ("::1", AddressKind.LOOPBACK),
    ("::ffff:127.0.0.1", AddressKind.LOOPBACK),
    ("169.254.169.254", AddressKind.METADATA),
    ("fd00:ec2::254", AddressKind.METADATA),
    ("169.254.1.1", AddressKind.LINK_LOCAL),
    ("fe80::1", AddressKind.LINK_LOCAL),
    ("0.0.0.0", AddressKind.UNSPECIFIED),
    ("224.0.0.1", AddressKind.MULTICAST),
    ("240.0.0.1", AddressKind.RESERVED),
    ("10.1.2.3", None),  # private: an operator's internal registry, when its name is allowed
    ("172.18.0.2", None),
    ("192.168.1.1", None),
    ("151.101.0.223", None),
])
def test_some_addresses_are_never_connected_to(address: str, kind: AddressKind | None) -> None:
    assert address_refusal(address) == kind
