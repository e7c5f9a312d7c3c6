"""apiauth as an OAuth client that needs no hand-made registration.

- **Client ID Metadata Document** (draft-ietf-oauth-client-id-metadata-document): the client
  id is the URL of a JSON document describing the client, which apiauth serves itself at
  `<APIAUTH_PUBLIC_URL>/oauth/client-metadata.json`; the server fetches it. Nothing is stored.
- **Dynamic Client Registration** (RFC 7591): apiauth POSTs its metadata to the server's
  `registration_endpoint` and keeps the client id and secret it gets; with RFC 7592 it can
  later read, update and delete that registration using the registration access token.

The answers are untrusted (`untrusted_json`); a registration that cannot be used (a changed
redirect URI, an authentication method apiauth does not speak) is refused and, where the
server allows it, deleted again, so that nothing is left half-made on either side.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import httpx

from apiauth.errors import DiscoveryFailed
from apiauth.oauth import untrusted_json
from apiauth.oauth.discovery import SUPPORTED_AUTH_METHODS, UrlCheck

__all__ = [
    "CLIENT_NAME",
    "Registration",
    "client_metadata",
    "client_metadata_document",
    "delete_registration",
    "read_registration",
    "register_client",
    "update_registration",
]

CLIENT_NAME = "apiauth"
MAX_CREDENTIAL_LENGTH = 500
GRANT_TYPES = ("authorization_code", "refresh_token")
#: The token endpoint authentication method of a public client (RFC 7591 §2).
PUBLIC_CLIENT = "none"


@dataclass(frozen=True, repr=False)
class Registration:
    """A client registered at one server (RFC 7591 §3.2.1). Secrets stay out of `repr`."""

    client_id: str
    client_secret: str | None
    token_endpoint_auth_method: str
    redirect_uris: tuple[str, ...]
    registration_access_token: str | None = None
    registration_client_uri: str | None = None
    client_secret_expires_at: datetime | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"Registration(client_id={self.client_id!r}, "
            f"token_endpoint_auth_method={self.token_endpoint_auth_method!r}, "
            f"manageable={self.manageable})"
        )

    @property
    def manageable(self) -> bool:
        """RFC 7592 applies: the server gave a registration URI and access token."""
        return bool(self.registration_client_uri and self.registration_access_token)

    def to_json(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "token_endpoint_auth_method": self.token_endpoint_auth_method,
            "redirect_uris": list(self.redirect_uris),
            "registration_access_token": self.registration_access_token,
            "registration_client_uri": self.registration_client_uri,
            "client_secret_expires_at": (
                self.client_secret_expires_at.isoformat() if self.client_secret_expires_at else None
            ),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Registration:
        expires = data.get("client_secret_expires_at")
        return cls(
            client_id=str(data["client_id"]),
            client_secret=data.get("client_secret"),
            token_endpoint_auth_method=str(data["token_endpoint_auth_method"]),
            redirect_uris=tuple(data.get("redirect_uris") or ()),
            registration_access_token=data.get("registration_access_token"),
            registration_client_uri=data.get("registration_client_uri"),
            client_secret_expires_at=datetime.fromisoformat(expires) if expires else None,
        )


def client_metadata(
    redirect_uri: str, auth_method: str, *, client_uri: str | None = None
) -> dict[str, Any]:
    """The client metadata apiauth registers (RFC 7591 §2): a web server client of the
    authorization code grant, with refresh tokens."""
    metadata: dict[str, Any] = {
        "client_name": CLIENT_NAME,
        "redirect_uris": [redirect_uri],
        "grant_types": list(GRANT_TYPES),
        "response_types": ["code"],
        "token_endpoint_auth_method": auth_method,
    }
    if client_uri:
        metadata["client_uri"] = client_uri
    return metadata


def client_metadata_document(
    document_url: str, redirect_uri: str, public_url: str
) -> dict[str, Any]:
    """The Client ID Metadata Document served at `document_url`, which is also the client id
    (draft-ietf-oauth-client-id-metadata-document §3). A public client (`none`): there is no
    secret to share with every server that reads the document, and PKCE protects the code."""
    return {
        "client_id": document_url,
        **client_metadata(redirect_uri, PUBLIC_CLIENT, client_uri=public_url),
    }


def register_client(
    http: httpx.Client,
    endpoint: str,
    redirect_uri: str,
    auth_methods: tuple[str, ...],
    check: UrlCheck,
    *,
    client_uri: str | None = None,
) -> Registration:
    """Register apiauth at `endpoint` (RFC 7591 §3.1) with the first of `auth_methods` (those
    both sides speak, best first). Raises `DiscoveryFailed` with the server's reason."""
    method = auth_methods[0]
    answer = untrusted_json.call(
        http,
        "POST",
        endpoint,
        what="client registration",
        json_body=client_metadata(redirect_uri, method, client_uri=client_uri),
    )
    if answer.status not in (200, 201) or answer.body is None:
        detail = answer.error_detail() or answer.problem or "no reason given"
        raise DiscoveryFailed(
            f"the server refused to register apiauth as a client at {endpoint} "
            f"(HTTP {answer.status}: {detail})"
        )
    registration = _registration(answer.body, endpoint, check)
    problem = _unusable(registration, redirect_uri, method)
    if problem is not None:
        if registration.manageable:
            with contextlib.suppress(DiscoveryFailed):
                delete_registration(http, registration)
        raise DiscoveryFailed(f"the registration at {endpoint} cannot be used: {problem}")
    return registration


def read_registration(
    http: httpx.Client, registration: Registration, check: UrlCheck
) -> Registration:
    """The registration as the server now has it (RFC 7592 §2.1); it may carry a new secret
    or registration access token, which replace the old ones."""
    assert registration.registration_client_uri is not None
    answer = untrusted_json.call(
        http,
        "GET",
        registration.registration_client_uri,
        what="client registration",
        headers=_bearer(registration),
    )
    return _managed_answer(answer, registration, check, "read")


def update_registration(
    http: httpx.Client, registration: Registration, redirect_uri: str, check: UrlCheck
) -> Registration:
    """Replace the registered metadata (RFC 7592 §2.2), e.g. with a new redirect URI after
    `APIAUTH_PUBLIC_URL` changed. The request carries every field, the client id included."""
    assert registration.registration_client_uri is not None
    body = {
        **client_metadata(redirect_uri, registration.token_endpoint_auth_method),
        "client_id": registration.client_id,
    }
    if registration.client_secret:
        body["client_secret"] = registration.client_secret
    answer = untrusted_json.call(
        http,
        "PUT",
        registration.registration_client_uri,
        what="client registration",
        json_body=body,
        headers=_bearer(registration),
    )
    updated = _managed_answer(answer, registration, check, "update")
    problem = _unusable(updated, redirect_uri, registration.token_endpoint_auth_method)
    if problem is not None:
        raise DiscoveryFailed(f"the updated registration cannot be used: {problem}")
    return updated


def delete_registration(http: httpx.Client, registration: Registration) -> bool:
    """Delete the registration (RFC 7592 §2.3); False when the server offers no management.
    A registration already gone (401, 403, 404: RFC 7592 §2.3 answers 401 for an unknown
    client) counts as deleted."""
    if not registration.manageable:
        return False
    assert registration.registration_client_uri is not None
    answer = untrusted_json.call(
        http,
        "DELETE",
        registration.registration_client_uri,
        what="client registration",
        headers=_bearer(registration),
    )
    if answer.status in (200, 204, 401, 403, 404):
        return True
    raise DiscoveryFailed(
        f"the server did not delete the client registration (HTTP {answer.status}"
        f"{': ' + answer.error_detail() if answer.error_detail() else ''})"
    )


def _bearer(registration: Registration) -> dict[str, str]:
    return {"Authorization": f"Bearer {registration.registration_access_token}"}


def _managed_answer(
    answer: untrusted_json.Answer, registration: Registration, check: UrlCheck, action: str
) -> Registration:
    if answer.status != 200 or answer.body is None:
        detail = answer.error_detail() or answer.problem or "no reason given"
        raise DiscoveryFailed(
            f"could not {action} the client registration (HTTP {answer.status}: {detail})"
        )
    fresh = _registration(answer.body, registration.registration_client_uri or "", check)
    if fresh.client_id != registration.client_id:
        raise DiscoveryFailed(f"the server's {action} answer is for another client")
    # RFC 7592 §2.1-2.2: a new secret or access token may come back; absent ones stay.
    return replace(
        fresh,
        client_secret=fresh.client_secret or registration.client_secret,
        registration_access_token=(
            fresh.registration_access_token or registration.registration_access_token
        ),
        registration_client_uri=(
            fresh.registration_client_uri or registration.registration_client_uri
        ),
    )


def _registration(body: Mapping[str, Any], endpoint: str, check: UrlCheck) -> Registration:
    where = f"the registration answer of {endpoint}"

    def text(name: str, required: bool = False) -> str | None:
        value = body.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not 0 < len(value) <= MAX_CREDENTIAL_LENGTH:
            raise DiscoveryFailed(
                f"{where}: {name} must be a string of 1 to {MAX_CREDENTIAL_LENGTH} characters"
            )
        return value

    client_id = text("client_id", required=True)
    assert client_id is not None
    redirect_uris = body.get("redirect_uris", [])
    if not isinstance(redirect_uris, list) or not all(isinstance(u, str) for u in redirect_uris):
        raise DiscoveryFailed(f"{where}: redirect_uris must be a list of URLs")
    uri = text("registration_client_uri")
    if uri is not None:
        check(uri, "registration_client_uri")
    expires_at = body.get("client_secret_expires_at", 0)
    if isinstance(expires_at, bool) or not isinstance(expires_at, int) or expires_at < 0:
        raise DiscoveryFailed(f"{where}: client_secret_expires_at must be a number of seconds")
    return Registration(
        client_id=client_id,
        client_secret=text("client_secret"),
        token_endpoint_auth_method=text("token_endpoint_auth_method") or "client_secret_basic",
        redirect_uris=tuple(redirect_uris),
        registration_access_token=text("registration_access_token"),
        registration_client_uri=uri,
        client_secret_expires_at=(datetime.fromtimestamp(expires_at, UTC) if expires_at else None),
        metadata=dict(body),
    )


def _unusable(registration: Registration, redirect_uri: str, method: str) -> str | None:
    """Why a registration cannot serve apiauth's flow (RFC 7591 §3.2.1 lets the server
    change what was asked for), or None."""
    if registration.redirect_uris and redirect_uri not in registration.redirect_uris:
        return f"the server registered other redirect URIs than {redirect_uri}"
    chosen = registration.token_endpoint_auth_method
    public = chosen == PUBLIC_CLIENT
    if chosen not in SUPPORTED_AUTH_METHODS:
        return (
            f"the server chose the client authentication method "
            f"{registration.token_endpoint_auth_method}, which apiauth does not speak"
        )
    if not public and not registration.client_secret:
        return f"the server chose {chosen} but gave no secret"
    if method == PUBLIC_CLIENT and not public:
        return "the server made a confidential client of a public one"
    return None
