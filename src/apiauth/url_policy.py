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
to the address that was checked (`pinned_request`, `GuardedTransport`), so a second,
different answer cannot slip in between the check and the connection.

Two policies, because two kinds of people choose the URLs: deploy hooks and webhooks are
entered by any site member, provider URLs by the operator (the providers file) or a team
owner (providers added by URL). An operator whose GitLab or Keycloak runs on the private
network names its hosts (`APIAUTH_PROVIDER_HOSTS`), which opens those hosts to provider calls
only, never to hooks (`for_providers`).
A refusal names the setting that would allow the URL.
"""

from __future__ import annotations

import ipaddress
import socket
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from threading import Lock
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

import anyio.to_thread
import httpx

from apiauth.errors import UrlNotAllowed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[..., Sequence[tuple[Any, ...]]]

MAX_URL_LENGTH = 2048
_Pool = TypeVar("_Pool")


LOOPBACK_SETTING = "APIAUTH_ALLOW_LOOPBACK_URLS"
PRIVATE_SETTING = "APIAUTH_ALLOW_PRIVATE_URLS"
PROVIDER_HOSTS_SETTING = "APIAUTH_PROVIDER_HOSTS"


@dataclass(frozen=True)
class UrlPolicy:
    allow_loopback: bool = False
    allow_private: bool = False
    #: Hosts of providers the operator runs on the private network or this machine: their
    #: URLs may resolve to private or loopback addresses (plain http still only to loopback).
    trusted_hosts: frozenset[str] = field(default_factory=frozenset)
    #: The policy of provider URLs (refusals then also name `APIAUTH_PROVIDER_HOSTS`).
    providers: bool = False

    def for_providers(self, hosts: Collection[str]) -> UrlPolicy:
        """This policy for provider URLs: the same, plus the operator's provider hosts."""
        trusted = frozenset(h.strip().lower().strip("[]") for h in hosts if h.strip())
        return replace(self, trusted_hosts=self.trusted_hosts | trusted, providers=True)

    def trusts(self, host: str) -> bool:
        return host.lower().strip("[]") in self.trusted_hosts

    def describe(self) -> str:
        allowed = ["public addresses over https"]
        if self.allow_private:
            allowed.append("private addresses over https")
        if self.allow_loopback:
            allowed.append("loopback over http(s)")
        if self.trusted_hosts:
            allowed.append("the provider hosts " + ", ".join(sorted(self.trusted_hosts)))
        return ", ".join(allowed)

    def remedy(self, kind: str, host: str) -> str:
        """The setting that would allow a URL refused for pointing at `kind` addresses."""
        setting = LOOPBACK_SETTING if kind == "loopback" else PRIVATE_SETTING
        advice = f"set {setting}=true to allow {kind} addresses"
        if self.providers:
            advice += f", or {PROVIDER_HOSTS_SETTING}={host} to allow this provider host only"
        return advice


@dataclass(frozen=True)
class CheckedUrl:
    """A URL that passed the policy, with the addresses its host resolved to (none when it
    did not resolve and resolution was not required)."""

    url: str
    host: str
    addresses: tuple[IPAddress, ...]


def _address_problem(
    address: IPAddress, policy: UrlPolicy, trusted: bool
) -> tuple[str, str | None] | None:
    """(what the address is, the kind a setting could allow) when the policy refuses it."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return None if policy.allow_loopback or trusted else ("a loopback address", "loopback")
    if address.is_unspecified:
        return "an unspecified address", None
    if address.is_link_local:
        return "a link-local address (such as a cloud metadata service)", None
    if address.is_multicast:
        return "a multicast address", None
    if address.is_reserved:
        return "a reserved address", None
    if address.is_private:
        return None if policy.allow_private or trusted else ("a private address", "private")
    if not address.is_global:
        return "an address that is not public", None
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
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        # urlsplit drops some of them, HTTP clients refuse them all: one rule, at the edge.
        raise UrlNotAllowed(f"the {what} must not hold control characters")
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError:  # an unclosed IPv6 bracket, a bad zone: urlsplit's own refusal
        raise UrlNotAllowed(f"the {what} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not hostname or len(url) > MAX_URL_LENGTH:
        raise UrlNotAllowed(
            f"the {what} must be an https URL of at most {MAX_URL_LENGTH} characters"
        )
    host = hostname
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
    trusted = policy.trusts(host)
    for address in addresses:
        problem = _address_problem(address, policy, trusted)
        if problem is not None:
            reason, kind = problem
            remedy = f"; {policy.remedy(kind, host)}" if kind else ""
            raise UrlNotAllowed(
                f"the {what} points at {reason} ({address}), which this server does not "
                f"call (allowed: {policy.describe()}){remedy}"
            )
    all_loopback = bool(addresses) and all(_is_loopback(a) for a in addresses)
    if parts.scheme != "https" and not ((policy.allow_loopback or trusted) and all_loopback):
        raise UrlNotAllowed(
            f"the {what} must use https (plain http only to loopback, when allowed)"
        )
    return CheckedUrl(url, host, tuple(addresses))


def is_loopback_host(host: str | None) -> bool:
    """The host is this machine by its name or address alone (no lookup): `localhost`,
    127.0.0.0/8, ::1."""
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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


def _pin(request: httpx.Request, policy: UrlPolicy, resolve: Resolver | None) -> str:
    """Check the request's URL against the policy and point it at the checked address (the
    Host header and TLS name kept); returns the host name. Raises `UrlNotAllowed`."""
    what = str(request.extensions.get("url_role", "provider URL"))
    checked = check_url(str(request.url), policy, what, require_resolution=True, resolve=resolve)
    url, headers, extensions = pinned_request(checked)
    request.url = httpx.URL(url)
    request.headers.update(headers)
    request.extensions = {**request.extensions, **extensions}
    return checked.host


class _PerHostPools(Generic[_Pool]):
    """Connection pools by host name, so that a TLS connection made for one name is never
    reused for another name that resolved to the same address. Bounded."""

    max_hosts = 256

    def __init__(self, make: Callable[[], _Pool]) -> None:
        self._make = make
        self._pools: OrderedDict[str, _Pool] = OrderedDict()
        self._lock = Lock()

    def get(self, host: str) -> tuple[_Pool, _Pool | None]:
        """The host's pool, and one evicted to make room (for the caller to close)."""
        with self._lock:
            pool = self._pools.get(host)
            evicted = None
            if pool is None:
                pool = self._pools[host] = self._make()
                if len(self._pools) > self.max_hosts:
                    _, evicted = self._pools.popitem(last=False)
            else:
                self._pools.move_to_end(host)
            return pool, evicted

    def drain(self) -> list[_Pool]:
        with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
        return pools


class GuardedTransport(httpx.BaseTransport):
    """An httpx transport that checks every request's URL against a policy right before it
    is sent, and sends it to the address it checked (as `pinned_request` does): for calls
    whose URLs come from outside (providers added by URL, custom providers, metadata a
    server published). A refused URL raises `UrlNotAllowed`."""

    def __init__(
        self, policy: UrlPolicy, *, resolve: Resolver | None = None, **transport_options: Any
    ) -> None:
        self.policy = policy
        self._resolve = resolve
        self._pools = _PerHostPools(lambda: httpx.HTTPTransport(**transport_options))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        pool, evicted = self._pools.get(_pin(request, self.policy, self._resolve))
        if evicted is not None:
            evicted.close()
        return pool.handle_request(request)

    def close(self) -> None:
        for pool in self._pools.drain():
            pool.close()


class AsyncGuardedTransport(httpx.AsyncBaseTransport):
    """`GuardedTransport` for async clients (the proxy); the name is resolved in a worker
    thread, off the event loop."""

    def __init__(
        self, policy: UrlPolicy, *, resolve: Resolver | None = None, **transport_options: Any
    ) -> None:
        self.policy = policy
        self._resolve = resolve
        self._pools = _PerHostPools(lambda: httpx.AsyncHTTPTransport(**transport_options))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = await anyio.to_thread.run_sync(_pin, request, self.policy, self._resolve)
        pool, evicted = self._pools.get(host)
        if evicted is not None:
            await evicted.aclose()
        return await pool.handle_async_request(request)

    async def aclose(self) -> None:
        for pool in self._pools.drain():
            await pool.aclose()
