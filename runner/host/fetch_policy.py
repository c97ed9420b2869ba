"""The fetch policy where the host applies it: right before git contacts a repository.

`checked` takes a routine's URL and the host's `FetchPolicy` (from `SandboxConfig`): the
URL is checked again as at save time (`runner.repo_policy.check`; the routine may predate
the settings), then its host is resolved with `resolve`, every address is checked, and
the answer says how git must connect, so that it connects to a checked address and no
other:

- https: `http.curloptResolve` pins `HOST:PORT` to the checked addresses (git hands it
  to libcurl as `CURLOPT_RESOLVE`, so curl does not resolve the name again; the empty
  value first drops any entry the host's own config has), and `http.followRedirects`
  is off, since a redirect would lead to a host nobody checked. git is given the URL
  with its host in normal form, the name the pin is for.
- ssh: the name and its addresses are checked, but not pinned. ssh resolves the name
  itself, and the host's ssh config may send it elsewhere (`HostName`, `ProxyJump`),
  which a pin would have to override. So between the check and ssh's own lookup a
  changed DNS answer is not caught: where that matters, use https URLs.
- local (only with `allow_local`): nothing is resolved.

When the host uses an HTTP proxy, the proxy connects and the pin does not apply; the
name is still checked. `resolve` is injectable so that tests never use real DNS.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass

from runner.repo_policy import FetchPolicy, Location, Reason, Refusal, check, check_addresses

__all__ = ["Fetch", "FetchPolicy", "Refusal", "Resolver", "checked", "pinned_config",
           "system_resolve"]

Resolver = Callable[[str], list[str]]  # a host name -> the addresses it resolves to


def system_resolve(host: str) -> list[str]:
    """Every address the system's resolver gives for `host` (none when it fails)."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class Fetch:
    """How git must contact an accepted repository: the URL to give it and the
    command-line config to add (in order; a key may repeat)."""

    location: Location
    addresses: tuple[str, ...] = ()
    config: tuple[tuple[str, str], ...] = ()

    @property
    def url(self) -> str:
        return self.location.url


def checked(url: str, policy: FetchPolicy, resolve: Resolver = system_resolve,
            ) -> Fetch | Refusal:
    """The policy's answer for `url`: how to fetch it, or why not (see the module's
    docstring). Nothing is contacted but the resolver."""
    located = check(url, policy)
    if isinstance(located, Refusal):
        return located
    if located.transport == "local":
        return Fetch(located)
    try:
        addresses = tuple(dict.fromkeys(resolve(located.host)))
    except (OSError, UnicodeError, ValueError):
        return Refusal(Reason.UNRESOLVED, located.host)
    refused = check_addresses(located.host, addresses)
    if refused is not None:
        return refused
    return Fetch(located, addresses, pinned_config(located, addresses))


def pinned_config(location: Location, addresses: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """The git config that makes git connect to `location` at `addresses` only (https);
    nothing for ssh (see the module's docstring)."""
    if location.transport != "https":
        return ()
    listed = ",".join(f"[{a}]" if ":" in a else a for a in addresses)
    return (("http.curloptResolve", ""),
            ("http.curloptResolve", f"{location.host}:{location.effective_port}:{listed}"),
            ("http.followRedirects", "false"))
