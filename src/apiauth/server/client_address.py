"""The client's address, by one rule for everything that uses it: the audit log, the rate
limits and the sign-in throttle.

The client is the peer of the TCP connection, unless that peer is one of
`APIAUTH_TRUSTED_PROXIES` (addresses or CIDRs; none by default). Only then are the proxies'
headers believed: RFC 7239 `Forwarded` (its `for=`), or else `X-Forwarded-For`. Their hops are
read from the right, the nearest proxy's end; trusted proxies are skipped, and the first hop
that is not one is the client. A hop that is not an IP address (`unknown`, an obfuscated
name, garbage) stops the walk: the last address known for sure - a trusted proxy - stands
for the client then. Uvicorn's own reading of these headers (`proxy_headers`) is off, so
nothing else in the process believes them.

What comes out is a valid IP address in its normal written form (at most 45 characters, so
it fits `audit_events.ip`), or None when the server has no peer address at all.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from fastapi import Request
from starlette.types import Scope

__all__ = ["ClientAddresses", "ProxyNetwork", "client_address", "client_key"]

ProxyNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# More hops than this in one request are not read: a proxy chain is a handful long.
MAX_HOPS = 30
MAX_HEADER = 4096
UNKNOWN = "unknown"


def _address(text: str) -> IPAddress | None:
    text = text.strip().strip('"')
    if text.startswith("["):  # RFC 7239: "[2001:db8::1]:4711"
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # "192.0.2.1:4711"
        text = text.partition(":")[0]
    if not text or len(text) > 45:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _forwarded_hops(value: str) -> list[str]:
    hops = []
    for element in value.split(","):
        for pair in element.split(";"):
            name, equals, hop = pair.strip().partition("=")
            if equals and name.strip().lower() == "for":
                hops.append(hop)
                break
        else:
            hops.append(UNKNOWN)  # an element without for=: a hop we know nothing of
    return hops


PEERS_REMEMBERED = 4096


class ClientAddresses:
    """The rule, with the server's trusted proxies."""

    def __init__(self, trusted: Sequence[ProxyNetwork] = ()) -> None:
        self.trusted = tuple(trusted)
        # The TCP peers seen, parsed (the warm read's profile: parsing the same peer's
        # address on every request was an eighth of its time). Peers are few; the memory is
        # dropped whole when it grows past PEERS_REMEMBERED.
        self._peers: dict[str, IPAddress | None] = {}

    def _is_trusted(self, address: IPAddress) -> bool:
        return any(address in network for network in self.trusted)

    def _peer(self, peer: str) -> IPAddress | None:
        try:
            return self._peers[peer]
        except KeyError:
            if len(self._peers) >= PEERS_REMEMBERED:
                self._peers = {}
            found = self._peers[peer] = _address(peer)
            return found

    def resolve(self, peer: str | None, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        found = self._peer(peer) if peer else None
        if found is None:
            return None
        if not self.trusted or not self._is_trusted(found):
            return str(found)
        forwarded: list[str] = []
        x_forwarded: list[str] = []
        for name, value in headers:
            if name == b"forwarded":
                forwarded.append(value.decode("latin-1"))
            elif name == b"x-forwarded-for":
                x_forwarded.append(value.decode("latin-1"))
        if forwarded:
            hops = _forwarded_hops(",".join(forwarded)[:MAX_HEADER])
        else:
            hops = ",".join(x_forwarded)[:MAX_HEADER].split(",") if x_forwarded else []
        for hop in reversed(hops[-MAX_HOPS:]):
            address = _address(hop)
            if address is None:
                break
            found = address
            if not self._is_trusted(address):
                break
        return str(found)

    def of_scope(self, scope: Scope) -> str | None:
        client = scope.get("client")
        return self.resolve(client[0] if client else None, scope.get("headers", ()))


def client_address(request: Request) -> str | None:
    """The request's client address (see the module's docstring), or None if unknown."""
    rule: ClientAddresses = request.app.state.client_addresses
    return rule.of_scope(request.scope)


def client_key(request: Request) -> str:
    """The client address as a rate-limit key: `unknown` shares one key."""
    return client_address(request) or UNKNOWN
