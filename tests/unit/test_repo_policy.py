"""The fetch policy's pure decisions: which repository URLs the host may contact, which
addresses their hosts may resolve to, and what git is told so that it connects to those
addresses only. The resolver is always a fake here: nothing is looked up or contacted."""

from __future__ import annotations

import socket

import pytest

from bot.core.routine import RoutineDraft, RoutineLimits, validate
from bot.errors import SettingsError
from bot.settings import Settings
from runner.errors import CloneRefused, PushRefused
from runner.host.fetch_policy import Fetch, checked, pinned_config
from runner.repo_policy import (
    DEFAULT_REPO_HOSTS,
    AddressKind,
    FetchPolicy,
    Location,
    Reason,
    Refusal,
    address_kind,
    check,
    host_allowed,
    parse_hosts,
)

# Clearly public, non-reserved addresses (GitHub's and Cloudflare's): only ever handed
# out by the fake resolver, never connected to.
PUBLIC_V4 = "140.82.121.4"
PUBLIC_V6 = "2606:4700:4700::1111"
DEFAULT = FetchPolicy()

U = Reason.UNSUPPORTED
IP = Reason.IP_LITERAL
BAD = Reason.INVALID_HOST
NO = Reason.NOT_ALLOWED


@pytest.mark.parametrize(("url", "transport", "host", "port", "git_url"), [
    ("https://github.com/org/repo.git", "https", "github.com", None, None),
    ("https://GitHub.COM/org/repo", "https", "github.com", None, "https://github.com/org/repo"),
    ("https://github.com./org/repo", "https", "github.com", None, "https://github.com/org/repo"),
    ("https://github.com:443/org/repo", "https", "github.com", 443, None),
    ("https://gitlab.com/group/sub/repo.git", "https", "gitlab.com", None, None),
    ("https://token@bitbucket.org/org/repo", "https", "bitbucket.org", None, None),
    ("ssh://git@github.com/org/repo.git", "ssh", "github.com", None, None),
    ("ssh://git@codeberg.org:2222/org/repo.git", "ssh", "codeberg.org", 2222, None),
    ("git@github.com:org/repo.git", "ssh", "github.com", None, None),
    ("git@GITLAB.com.:org/repo.git", "ssh", "gitlab.com", None, None),
    ("github.com:org/repo.git", "ssh", "github.com", None, None),
])
def test_the_default_forges_are_accepted(url: str, transport: str, host: str,
                                         port: int | None, git_url: str | None) -> None:
    assert check(url, DEFAULT) == Location(transport, git_url or url, host, port)  # type: ignore[arg-type]


@pytest.mark.parametrize(("url", "reason", "host"), [
    # Not an allowed host: look-alikes, userinfo, subdomains, punycode.
    ("https://evil@github.com.attacker.org/org/repo", NO, "github.com.attacker.org"),
    ("https://github.com@attacker.org/org/repo", NO, "attacker.org"),
    ("https://github.com:443@attacker.org/org/repo", NO, "attacker.org"),
    ("https://github.com.attacker.org/org/repo", NO, "github.com.attacker.org"),
    ("https://notgithub.com/org/repo", NO, "notgithub.com"),
    ("https://gist.github.com/org/repo", NO, "gist.github.com"),
    ("https://xn--gthub-n4a.com/org/repo", NO, "xn--gthub-n4a.com"),
    ("git@attacker.org:org/repo.git", NO, "attacker.org"),
    ("ssh://git@attacker.org/org/repo.git", NO, "attacker.org"),
    ("https:/github.com/org/repo", NO, "https"),  # git reads it as scp-like: host `https`
    # IP literals, in every spelling inet_aton and URL parsers accept.
    ("https://10.0.0.5/org/repo", IP, "10.0.0.5"),
    ("https://127.0.0.1/org/repo", IP, "127.0.0.1"),
    ("https://2130706433/org/repo", IP, "2130706433"),
    ("https://0x7f.1/org/repo", IP, "0x7f.1"),
    ("https://0x7f000001/org/repo", IP, "0x7f000001"),
    ("https://0177.0.0.1/org/repo", IP, "0177.0.0.1"),
    ("https://127.1/org/repo", IP, "127.1"),
    ("https://1.1.1.1./org/repo", IP, "1.1.1.1."),
    ("https://169.254.169.254/latest/meta-data/", IP, "169.254.169.254"),
    ("https://[::1]/org/repo", IP, "[::1]"),
    ("https://[::ffff:127.0.0.1]/org/repo", IP, "[::ffff:127.0.0.1]"),
    ("https://[::ffff:7f00:1]:443/org/repo", IP, "[::ffff:7f00:1]"),
    ("https://[fe80::1%25eth0]/org/repo", IP, "[fe80::1%25eth0]"),
    ("ssh://git@[fd00::1]/org/repo", IP, "[fd00::1]"),
    ("ssh://git@169.254.169.254/org/repo", IP, "169.254.169.254"),
    ("git@127.0.0.1:org/repo.git", IP, "127.0.0.1"),
    ("git@[::1]:org/repo.git", IP, "[::1]"),
    # Not a plain ASCII host name.
    ("https://gíthub.com/org/repo", BAD, "gíthub.com"),
    ("https://bitbuc\u212aet.org/org/repo", BAD, "bitbuc\u212aet.org"),  # Kelvin sign: k
    ("https://\uff47ithub.com/org/repo", BAD, "\uff47ithub.com"),  # fullwidth g
    ("https://github..com/org/repo", BAD, "github..com"),
    ("https://github.com../org/repo", BAD, "github.com.."),
    ("https://-github.com/org/repo", BAD, "-github.com"),
    ("https://%67ithub.com/org/repo", BAD, "%67ithub.com"),
    ("https:///org/repo", BAD, ""),
    ("git@-oProxyCommand=touch:org/repo", BAD, "-oProxyCommand=touch"),
    # Not a transport this bot accepts, or not a URL git and we would read alike.
    ("http://github.com/org/repo", U, ""),
    ("http://2130706433/", U, ""),
    ("http://0x7f.1/", U, ""),
    ("git://github.com/org/repo", U, ""),
    ("git+ssh://git@github.com/org/repo", U, ""),
    ("ext::sh -c touch% /tmp/pwned", U, ""),
    ("fd::17", U, ""),
    ("https://github.com", U, ""),
    ("https://github.com:99999/org/repo", U, ""),
    ("https://a@b@github.com/org/repo", U, ""),
    ("https://attacker.org\\@github.com/org/repo", U, ""),
    ("https://github.com\\.attacker.org/org/repo", U, ""),
    ("https://github.com/org/repo\n", U, ""),
    ("git@attacker.org@github.com:org/repo", U, ""),
    ("./relative/repo", U, ""),
    ("--upload-pack=touch /tmp/x", U, ""),
    ("", U, ""),
])
def test_refused_urls_say_why_and_name_the_host(url: str, reason: Reason, host: str) -> None:
    assert check(url, DEFAULT) == Refusal(reason, host)
    if reason is not NO:  # refused whatever the allowed hosts
        assert check(url, FetchPolicy(hosts=("*",))) == Refusal(reason, host)


@pytest.mark.parametrize("url", ["file:///srv/git/repo", "/srv/git/repo.git"])
def test_local_repositories_only_when_allowed(url: str) -> None:
    assert check(url, DEFAULT) == Refusal(Reason.LOCAL_DISABLED)
    assert check(url, FetchPolicy(allow_local=True)) == Location("local", url)


@pytest.mark.parametrize(("host", "patterns", "allowed"), [
    ("github.com", DEFAULT_REPO_HOSTS, True),
    ("codeberg.org", DEFAULT_REPO_HOSTS, True),
    ("gist.github.com", DEFAULT_REPO_HOSTS, False),
    ("github.co", DEFAULT_REPO_HOSTS, False),
    ("git.example.com", ("*.example.com",), True),
    ("a.b.example.com", ("*.example.com",), True),
    ("example.com", ("*.example.com",), False),
    ("evilexample.com", ("*.example.com",), False),
    ("example.com.evil.org", ("*.example.com",), False),
    ("anything.org", ("*",), True),
    ("git.example.com", (), False),
])
def test_host_patterns(host: str, patterns: tuple[str, ...], allowed: bool) -> None:
    assert host_allowed(host, patterns) is allowed


def test_the_setting_is_read_in_normal_form_and_bad_entries_are_named() -> None:
    assert parse_hosts("") == parse_hosts(" , ") == DEFAULT_REPO_HOSTS
    assert parse_hosts(" GitHub.com , *.Example.ORG., *,github.com") == (
        "github.com", "*.example.org", "*")
    with pytest.raises(ValueError, match=r"10\.0\.0\.1, \[::1\], \*\., git\*\.com, a:1"):
        parse_hosts("github.com, 10.0.0.1, [::1], *., git*.com, a:1")
    env = {"SLACK_BOT_TOKEN": "x", "ANTHROPIC_API_KEY": "y", "SLACK_SIGNING_SECRET": "z"}
    assert Settings.from_env(env).repo_hosts == DEFAULT_REPO_HOSTS
    hosts = {**env, "ROUTINES_REPO_HOSTS": "git.corp.example, *.forge.example"}
    assert Settings.from_env(hosts).repo_hosts == ("git.corp.example", "*.forge.example")
    with pytest.raises(SettingsError, match=r"setting ROUTINES_REPO_HOSTS: .*127\.0\.0\.1"):
        Settings.from_env({**env, "ROUTINES_REPO_HOSTS": "127.0.0.1"})


K = AddressKind


@pytest.mark.parametrize(("address", "kind"), [
    (PUBLIC_V4, None), (PUBLIC_V6, None), ("172.15.255.255", None), ("172.32.0.1", None),
    (f"::ffff:{PUBLIC_V4}", None), ("64:ff9b::8c52:7904", None),  # PUBLIC_V4 inside
    ("127.0.0.1", K.LOOPBACK), ("127.255.255.254", K.LOOPBACK), ("::1", K.LOOPBACK),
    ("::ffff:127.0.0.1", K.LOOPBACK), ("64:ff9b::7f00:1", K.LOOPBACK),
    ("10.0.0.5", K.PRIVATE), ("172.16.0.1", K.PRIVATE), ("172.31.255.255", K.PRIVATE),
    ("192.168.1.1", K.PRIVATE), ("100.64.0.1", K.PRIVATE), ("fc00::1", K.PRIVATE),
    ("fd12:3456::1", K.PRIVATE), ("::ffff:10.0.0.5", K.PRIVATE), ("fec0::1", K.PRIVATE),
    ("169.254.169.254", K.METADATA), ("::ffff:169.254.169.254", K.METADATA),
    ("fd00:ec2::254", K.METADATA),
    ("169.254.1.1", K.LINK_LOCAL), ("fe80::1", K.LINK_LOCAL), ("fe80::1%eth0", K.LINK_LOCAL),
    ("0.0.0.0", K.UNSPECIFIED), ("::", K.UNSPECIFIED),
    ("224.0.0.1", K.MULTICAST), ("239.255.255.250", K.MULTICAST), ("ff02::1", K.MULTICAST),
    ("192.0.2.1", K.RESERVED), ("198.51.100.7", K.RESERVED), ("203.0.113.9", K.RESERVED),
    ("2001:db8::1", K.RESERVED), ("198.18.0.1", K.RESERVED), ("240.0.0.1", K.RESERVED),
    ("255.255.255.255", K.RESERVED), ("0.1.2.3", K.RESERVED), ("192.0.0.8", K.RESERVED),
    ("2002:7f00:1::", K.RESERVED), ("::127.0.0.1", K.RESERVED), ("100::1", K.RESERVED),
    ("not an address", K.RESERVED),
])
def test_only_public_addresses_pass(address: str, kind: AddressKind | None) -> None:
    assert address_kind(address) is kind


class FakeResolver:
    """Answers from a table and records every question; never touches the network."""

    def __init__(self, answers: dict[str, list[str]] | None = None,
                 error: Exception | None = None) -> None:
        self.answers, self.error = answers or {}, error
        self.asked: list[str] = []

    def __call__(self, host: str) -> list[str]:
        self.asked.append(host)
        if self.error is not None:
            raise self.error
        return self.answers.get(host, [])


@pytest.mark.parametrize(("addresses", "refused", "kind"), [
    (["10.0.0.5"], "10.0.0.5", K.PRIVATE),
    (["192.0.2.1"], "192.0.2.1", K.RESERVED),  # TEST-NET-1: documentation, not public
    ([PUBLIC_V4, "169.254.169.254"], "169.254.169.254", K.METADATA),  # every one counts
    ([PUBLIC_V6, "::ffff:127.0.0.1"], "::ffff:127.0.0.1", K.LOOPBACK),
    (["fd00::5"], "fd00::5", K.PRIVATE),
])
def test_a_host_resolving_to_a_non_public_address_is_refused(
    addresses: list[str], refused: str, kind: AddressKind,
) -> None:
    resolve = FakeResolver({"github.com": addresses})
    assert checked("https://GitHub.com./org/repo", DEFAULT, resolve) == Refusal(
        Reason.PRIVATE_ADDRESS, "github.com", refused, kind)
    assert checked("git@github.com:org/repo", DEFAULT, resolve) == Refusal(
        Reason.PRIVATE_ADDRESS, "github.com", refused, kind)
    assert resolve.asked == ["github.com", "github.com"]  # the name in normal form


@pytest.mark.parametrize("resolve", [
    FakeResolver(), FakeResolver(error=socket.gaierror(socket.EAI_NONAME, "no such name")),
])
def test_a_host_that_does_not_resolve_is_refused(resolve: FakeResolver) -> None:
    assert checked("https://gitlab.com/org/repo", DEFAULT, resolve) == Refusal(
        Reason.UNRESOLVED, "gitlab.com")


@pytest.mark.parametrize("url", [
    "https://attacker.org/org/repo", "https://169.254.169.254/x", "git@[::1]:org/repo",
    "file:///srv/git/repo", "ext::sh -c id",
])
def test_nothing_is_resolved_for_a_url_refused_on_its_face(url: str) -> None:
    resolve = FakeResolver({"attacker.org": [PUBLIC_V4]})
    assert isinstance(checked(url, DEFAULT, resolve), Refusal)
    assert resolve.asked == []


def test_https_is_pinned_to_the_checked_addresses_and_redirects_are_refused() -> None:
    resolve = FakeResolver({"github.com": [PUBLIC_V4, PUBLIC_V6, PUBLIC_V4]})

    fetch = checked("https://GitHub.com.:8443/org/repo.git", DEFAULT, resolve)

    assert isinstance(fetch, Fetch)
    assert fetch.url == "https://github.com:8443/org/repo.git"  # the name the pin is for
    assert fetch.addresses == (PUBLIC_V4, PUBLIC_V6)
    assert fetch.config == (
        ("http.curloptResolve", ""),  # drops any pin of the host's own config
        ("http.curloptResolve", f"github.com:8443:{PUBLIC_V4},[{PUBLIC_V6}]"),
        ("http.followRedirects", "false"))
    default_port = checked("https://github.com/org/repo.git", DEFAULT, resolve)
    assert isinstance(default_port, Fetch)
    assert default_port.config[1] == ("http.curloptResolve",
                                      f"github.com:443:{PUBLIC_V4},[{PUBLIC_V6}]")


def test_ssh_is_checked_but_not_pinned_and_local_is_not_resolved() -> None:
    resolve = FakeResolver({"github.com": [PUBLIC_V4]})

    ssh = checked("git@github.com:org/repo.git", DEFAULT, resolve)
    local = checked("file:///srv/git/repo", FetchPolicy(allow_local=True), resolve)

    assert isinstance(ssh, Fetch) and ssh.addresses == (PUBLIC_V4,) and ssh.config == ()
    assert ssh.url == "git@github.com:org/repo.git"
    assert local == Fetch(Location("local", "file:///srv/git/repo"))
    assert resolve.asked == ["github.com"]
    assert pinned_config(Location("ssh", "ssh://github.com/x", "github.com"), (PUBLIC_V4,)) == ()


def test_a_routine_is_refused_on_its_repository_field_naming_the_host_and_the_setting() -> None:
    def repo_error(url: str, **limits: object) -> str | None:
        draft = RoutineDraft(name="deps", prompt="Check.", repo_url=url, channel_id="C0123ABC")
        return validate(draft, RoutineLimits(60, 3600, **limits)).get(  # type: ignore[arg-type]
            "repo_url")

    assert repo_error("https://github.com/org/repo", allow_local_repos=False) is None
    assert repo_error("https://github.com.attacker.org/org/repo", allow_local_repos=False) == (
        "Repository refused: github.com.attacker.org is not one of the allowed repository "
        "hosts (ROUTINES_REPO_HOSTS).")
    assert repo_error("https://git.corp.example/org/repo", allow_local_repos=False,
                      repo_hosts=("*.corp.example",)) is None
    assert repo_error("git@10.0.0.5:org/repo", allow_local_repos=False,
                      repo_hosts=("*",)) == (
        "Repository refused: 10.0.0.5 is an IP address; name the host instead.")
    assert repo_error("https://169.254.169.254/latest/meta-data", allow_local_repos=False) == (
        "Repository refused: 169.254.169.254 is an IP address; name the host instead.")


def test_clone_and_push_refusals_carry_the_facts_and_say_them_plainly() -> None:
    private = Refusal(Reason.PRIVATE_ADDRESS, "github.com", "10.0.0.5", K.PRIVATE)
    clone = CloneRefused("https://github.com/org/repo", private)
    push = PushRefused("https://attacker.org/x", Refusal(Reason.NOT_ALLOWED, "attacker.org"))

    assert (clone.url, clone.refusal.reason, clone.refusal.address) == (
        "https://github.com/org/repo", Reason.PRIVATE_ADDRESS, "10.0.0.5")
    assert str(clone) == ("clone of https://github.com/org/repo refused: github.com resolves "
                          "to 10.0.0.5, a private address")
    assert str(push) == ("push to https://attacker.org/x refused: attacker.org is not one of "
                         "the allowed repository hosts (ROUTINES_REPO_HOSTS)")
    assert str(CloneRefused("x", Refusal(Reason.PRIVATE_ADDRESS, "h", "169.254.169.254",
                                         K.METADATA))).endswith(
        "h resolves to 169.254.169.254, the cloud metadata address")
