"""Which URLs the server may call on someone's behalf (SSRF policy).

Deploy hooks, webhooks and custom providers are URLs other people choose and the server
POSTs to. Without a policy they reach what only the server can reach: its own admin ports
on 127.0.0.1, a cloud's metadata service at 169.254.169.254, the private network. The rule:

- https only; plain http only to loopback, and only where loopback is allowed;
- the host name is resolved and *every* address checked: loopback only with
  `APIAUTH_ALLOW_LOOPBACK_URLS` (or `serve --demo`), private ranges only with
  `APIAUTH_ALLOW_PRIVATE_URLS`, link-local, multicast, reserved, unspecified and shared
  (100.64/10) addresses never.

A URL is checked when it is entered (a name that does not resolve yet is accepted then) and
again right before each call, because a DNS answer can change in between; the call then goes
to the address that was checked (`pinned_request`), so a second, different answer cannot
slip in between the check and the connection.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from apiauth.errors import UrlNotAllowed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[..., Sequence[tuple[Any, ...]]]

MAX_URL_LENGTH = 2048


@dataclass(frozen=True)
class UrlPolicy:
    allow_loopback: bool = False
    allow_private: bool = False

    def describe(self) -> str:
        allowed = ["public addresses over https"]
        if self.allow_private:
            allowed.append("private addresses over https")
        if self.allow_loopback:
            allowed.append("loopback over http(s)")
        return ", ".join(allowed)


@dataclass(frozen=True)
class CheckedUrl:
    """A URL that passed the policy, with the addresses its host resolved to (none when it
    did not resolve and resolution was not required)."""

    url: str
    host: str
    addresses: tuple[IPAddress, ...]


def _address_problem(address: IPAddress, policy: UrlPolicy) -> str | None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return None if policy.allow_loopback else "a loopback address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_link_local:
        return "a link-local address (such as a cloud metadata service)"
    if address.is_multicast:
        return "a multicast address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private:
        return None if policy.allow_private else "a private address"
    if not address.is_global:
        return "an address that is not public"
    return None


def check_url(
    url: str,
    policy: UrlPolicy,
    what: str,
    *,
    require_resolution: bool = False,
    resolve: Resolver | None = None,
) -> CheckedUrl:
    """The URL and the addresses it may be called at, or `UrlNotAllowed` naming `what` and
    the reason. Without `require_resolution` a host that does not resolve passes (it is
    checked again before every call)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > MAX_URL_LENGTH:
        raise UrlNotAllowed(
            f"the {what} must be an https URL of at most {MAX_URL_LENGTH} characters"
        )
    host = parts.hostname
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UrlNotAllowed(f"the {what} has an invalid port") from None
    try:
        answers = (resolve or socket.getaddrinfo)(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        answers = []
    addresses: list[IPAddress] = []
    for answer in answers:
        try:
            address = ipaddress.ip_address(str(answer[4][0]).split("%", 1)[0])
        except ValueError:
            continue
        if address not in addresses:
            addresses.append(address)
    if not addresses and require_resolution:
        raise UrlNotAllowed(f"the host of the {what} does not resolve")
    for address in addresses:
        problem = _address_problem(address, policy)
        if problem is not None:
            raise UrlNotAllowed(
                f"the {what} points at {problem} ({address}), which this server does not "
                f"call (allowed: {policy.describe()})"
            )
    all_loopback = bool(addresses) and all(_is_loopback(a) for a in addresses)
    if parts.scheme != "https" and not (policy.allow_loopback and all_loopback):
        raise UrlNotAllowed(
            f"the {what} must use https (plain http only to loopback, when allowed)"
        )
    return CheckedUrl(url, host, tuple(addresses))


def _is_loopback(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def pinned_request(checked: CheckedUrl) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(URL, extra headers, httpx extensions) that call the first checked address while
    the `Host` header and TLS (SNI and certificate name) keep the host name."""
    if not checked.addresses:
        return checked.url, {}, {}
    parts = urlsplit(checked.url)
    address = checked.addresses[0]
    literal = f"[{address}]" if address.version == 6 else str(address)
    netloc = literal if parts.port is None else f"{literal}:{parts.port}"
    if "@" in parts.netloc:
        netloc = parts.netloc.rsplit("@", 1)[0] + "@" + netloc
    pinned = parts._replace(netloc=netloc).geturl()
    host_header = parts.hostname or checked.host
    if ":" in host_header:
        host_header = f"[{host_header}]"
    if parts.port is not None:
        host_header = f"{host_header}:{parts.port}"
    extensions: dict[str, Any] = {}
    if parts.scheme == "https":
        extensions["sni_hostname"] = checked.host
    return pinned, {"Host": host_header}, extensions
