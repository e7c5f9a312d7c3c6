"""A server found by URL (`oauth.discovery`) as a catalog entry of the team's: its name,
the scopes to offer and tick, the entry itself, and the entry a re-check makes of newer
metadata. Plain values in and out; storing them is `team_providers`' business."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from apiauth.oauth.discovery import Discovered, ServerMetadata
from apiauth.providers import Scope

__all__ = [
    "MAX_SCOPES",
    "OPENID_SCOPES",
    "catalog_entry",
    "display_name_of",
    "followed",
    "host_of",
    "offered_scopes",
    "slug",
    "with_defaults",
]

# A name for the provider when none is given: its host, in catalog-name form.
_NAME_CHARS = re.compile(r"[^a-z0-9_-]+")
MAX_SCOPES = 100

#: The standard OpenID Connect scopes (OpenID Connect Core 1.0 §5.4, §11), described for the
#: person ticking them; a server's own scopes come without descriptions.
OPENID_SCOPES = {
    "openid": "Sign in with OpenID Connect (names the connected account)",
    "offline_access": "Stay connected: a refresh token, so the token can be renewed",
    "profile": "Your name and profile",
    "email": "Your email address",
    "address": "Your postal address",
    "phone": "Your phone number",
}


def host_of(url: str) -> str:
    host = (urlsplit(url).hostname or "provider").lower()
    return host[4:] if host.startswith("www.") else host


def slug(text: str) -> str:
    """A catalog name from a host or a resource's name: `auth.example.com` → `auth-example-com`."""
    name = _NAME_CHARS.sub("-", text.lower().replace(".", "-")).strip("-")
    if not name or not name[0].isalpha():
        name = "server-" + name
    return name[:63].rstrip("-")


def display_name_of(found: Discovered) -> str:
    if found.resource is not None and found.resource.resource_name:
        return found.resource.resource_name
    parts = urlsplit(found.resource.resource if found.resource else found.server.issuer)
    return (parts.netloc + parts.path.rstrip("/"))[:100]


def offered_scopes(found: Discovered) -> tuple[Scope, ...]:
    """The scopes to offer, and which are ticked: for a resource, what its 401 asked for,
    else what its metadata lists (the MCP specification's scope selection); for an OpenID
    provider, `openid`; and `offline_access` wherever the server has it, for a refresh
    token."""
    server = found.server
    names = list(server.scopes_supported)
    if found.resource is not None:
        wanted = list(found.challenge_scopes or found.resource.scopes_supported)
        names = list(dict.fromkeys([*found.resource.scopes_supported, *wanted, *names]))
    else:
        wanted = ["openid"] if server.openid and "openid" in names else []
    if "offline_access" in names:
        wanted.append("offline_access")
    return tuple(
        Scope(name=n, description=OPENID_SCOPES.get(n, ""), default=n in wanted)
        for n in names[:MAX_SCOPES]
    )


def with_defaults(offered: tuple[Scope, ...], chosen: Sequence[str] | None) -> tuple[Scope, ...]:
    if chosen is None:
        return offered
    names = list(dict.fromkeys(s.strip() for s in chosen if s.strip()))
    known = {s.name for s in offered}
    scopes = [Scope(s.name, s.description, s.name in names) for s in offered]
    scopes += [Scope(n, OPENID_SCOPES.get(n, ""), True) for n in names if n not in known]
    return tuple(scopes[:MAX_SCOPES])


def catalog_entry(
    found: Discovered, display_name: str, scopes: tuple[Scope, ...], auth_method: str
) -> dict[str, Any]:
    """The provider as a catalog table (SPEC §4's format), from its metadata."""
    server = found.server
    entry: dict[str, Any] = {
        "display_name": display_name,
        "authorization_url": server.authorization_endpoint,
        "token_url": server.token_endpoint,
        "token_auth_method": auth_method,
        "pkce": True,  # S256 always with servers found by URL
        "scope_separator": " ",
        "scopes": [
            {"name": s.name, "description": s.description, "default": s.default} for s in scopes
        ],
        "issuer": server.issuer,
        "require_iss": server.iss_parameter_supported,
        "docs_url": server.metadata_url,
    }
    if server.revocation_endpoint:
        entry["revoke_url"] = server.revocation_endpoint
    if found.resource is not None:
        entry["resource"] = found.resource.resource
        parts = urlsplit(found.resource.resource)
        # The proxy reaches the resource's host: /api/v1/proxy/<name>/mcp → <origin>/mcp.
        entry["api_base_url"] = urlunsplit((parts.scheme, parts.netloc, "", "", ""))
    elif server.userinfo_endpoint:
        # A token asked for a resource is for that resource only: the userinfo endpoint
        # (OpenID Connect Core §5.3) names the account only for tokens of the server itself.
        entry["userinfo_url"] = server.userinfo_endpoint
        entry["account_id_field"] = "sub"
    if any(s.name == "offline_access" and s.default for s in scopes) and server.openid:
        # OpenID Connect Core §11: offline_access is ignored unless consent is prompted.
        entry["authorize_params"] = {"prompt": "consent"}
    return entry


def followed(entry: dict[str, Any], server: ServerMetadata) -> dict[str, Any]:
    """The entry with the server's current endpoints and `iss` promise; scopes and the
    client stay as the team chose them."""
    fresh = dict(entry)
    fresh["authorization_url"] = server.authorization_endpoint
    fresh["token_url"] = server.token_endpoint
    for key, url in (
        ("revoke_url", server.revocation_endpoint),
        ("userinfo_url", server.userinfo_endpoint),
    ):
        if key in entry and url:
            fresh[key] = url
    fresh["require_iss"] = bool(entry.get("require_iss")) or server.iss_parameter_supported
    # New scopes are offered (unticked); those the team has keep their ticks.
    scopes = list(entry.get("scopes") or [])
    known = {str(s.get("name")) for s in scopes if isinstance(s, dict)}
    for name in server.scopes_supported:
        if name not in known and len(scopes) < MAX_SCOPES:
            scopes.append(
                {"name": name, "description": OPENID_SCOPES.get(name, ""), "default": False}
            )
    fresh["scopes"] = scopes
    return fresh
