"""The key-based providers of the emulator (auth modes `api_key` and `basic`, SPEC §7).

Demo keys have the form `emu-<provider>-<at least 16 characters>` (basic: username
`emu-<provider>` and such a password); others are refused as the provider refuses them.
A key revoked through `/_admin/revoke-key` is refused from then on, so that tests can watch a
re-verification mark the connection `needs_reauth`.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from apiauth.providers import Provider

__all__ = [
    "CLIENT_ASSERTION_TYPE",
    "JWT_BEARER_GRANT",
    "AssertionRefused",
    "KeyRing",
    "PublicKeys",
    "account_answer",
    "demo_key_ok",
    "presented_key",
    "refusal",
]

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
MAX_ASSERTION_SECONDS = 3600

MIN_RANDOM_PART = 16


def demo_key_ok(provider: str, key: str) -> bool:
    prefix = f"emu-{provider}-"
    return key.startswith(prefix) and len(key) - len(prefix) >= MIN_RANDOM_PART


class KeyRing:
    """Keys revoked by tests; everything else of the form `demo_key_ok` is accepted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._revoked: set[tuple[str, str]] = set()

    def revoke(self, provider: str, key: str) -> None:
        with self._lock:
            self._revoked.add((provider, key))

    def reset(self) -> None:
        with self._lock:
            self._revoked.clear()

    def accepts(self, provider: Provider, presented: tuple[str | None, str] | None) -> bool:
        if presented is None:
            return False
        username, key = presented
        with self._lock:
            if (provider.name, key) in self._revoked:
                return False
        if provider.auth_mode == "basic" and username != f"emu-{provider.name}":
            return False
        return demo_key_ok(provider.name, key)


def presented_key(provider: Provider, request: Request) -> tuple[str | None, str] | None:
    """(username, key) as the request carries them where the catalog says, or None."""
    if provider.auth_mode == "basic":
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        username, sep, password = decoded.partition(":")
        return (username, password) if sep else None
    if provider.api_key_query_param:
        in_query = request.query_params.get(provider.api_key_query_param)
        return (None, in_query) if in_query else None
    sent = request.headers.get(provider.api_key_header)
    if sent is None or not sent.startswith(provider.api_key_prefix):
        return None
    key = sent[len(provider.api_key_prefix) :]
    return (None, key) if key else None


# How some providers word a refused key (from their documentation and observed answers);
# the rest answer a generic 401.
_REFUSALS: Mapping[str, tuple[int, dict[str, Any]]] = {
    "openai": (
        401,
        {
            "error": {
                "message": "Incorrect API key provided. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        },
    ),
    "anthropic": (
        401,
        {
            "type": "error",
            "error": {"type": "authentication_error", "message": "invalid x-api-key"},
        },
    ),
    "sendgrid": (
        401,
        {"errors": [{"field": None, "message": "The provided authorization grant is invalid"}]},
    ),
    "datadog": (403, {"errors": ["Forbidden"]}),
    "twilio": (
        401,
        {
            "code": 20003,
            "message": "Authenticate",
            "more_info": "https://www.twilio.com/docs/errors/20003",
            "status": 401,
        },
    ),
    "stripe-secret-key": (
        401,
        {"error": {"message": "Invalid API Key provided", "type": "invalid_request_error"}},
    ),
}


def refusal(provider: Provider) -> Response:
    status, body = _REFUSALS.get(
        provider.name, (401, {"error": "unauthorized", "message": "Invalid credentials"})
    )
    return JSONResponse(body, status)


def account_answer(provider: Provider, username: str | None) -> dict[str, Any]:
    """A verification answer naming an emulated account where the catalog reads one."""
    body: dict[str, Any] = {"object": "emulated", "provider": provider.name}
    values = {
        provider.account_id_field: f"emu-{provider.name}-account",
        provider.account_login_field: username or f"someone@{provider.name}.example",
    }
    for path, value in values.items():
        if not path:
            continue
        node = body
        *parents, leaf = path.split(".")
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[leaf] = value
    return body


class AssertionRefused(Exception):
    """A jwt-bearer assertion the emulated token endpoint does not accept (the message is
    the provider's `error_description`)."""


CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class PublicKeys:
    """Service accounts' and `private_key_jwt` clients' public keys by (provider, issuer),
    as registered by tests, and the Workspace domain a service account may act in by
    domain-wide delegation (as a domain's administrator grants it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[tuple[str, str], Any] = {}
        self._seen_jti: set[tuple[str, str]] = set()
        self._delegation: dict[tuple[str, str], str] = {}

    def verify_client_assertion(
        self, provider: Provider, assertion: str, audience: str, client_id: str
    ) -> dict[str, Any]:
        """RFC 7523 §2.2 and §3: a client authenticating with a JWT signed by its private
        key: `iss` and `sub` the client id, `aud` the token endpoint, `exp` in the future (an
        hour at most), a `jti` not seen before (replay). Refusals raise `AssertionRefused`
        with the `error_description`."""
        from joserfc import jwt
        from joserfc.errors import JoseError

        with self._lock:
            key = self._keys.get((provider.name, client_id))
        if key is None:
            raise AssertionRefused("No public key is registered for this client.")
        try:
            claims = dict(jwt.decode(assertion, key, algorithms=["RS256"]).claims)
        except (JoseError, ValueError):
            raise AssertionRefused("The client assertion's signature is not valid.") from None
        if claims.get("iss") != client_id or claims.get("sub") != client_id:
            raise AssertionRefused("The client assertion's iss and sub must be the client id.")
        aud = claims.get("aud")
        if aud != audience and not (isinstance(aud, list) and audience in aud):
            raise AssertionRefused("The client assertion's aud is not this token endpoint.")
        exp, now = claims.get("exp"), time.time()
        if not isinstance(exp, int | float) or exp <= now or exp > now + MAX_ASSERTION_SECONDS:
            raise AssertionRefused("The client assertion is expired or lives too long.")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise AssertionRefused("The client assertion has no jti.")
        with self._lock:
            if (client_id, jti) in self._seen_jti:
                raise AssertionRefused("The client assertion was used before (jti).")
            self._seen_jti.add((client_id, jti))
        return claims

    def register(
        self,
        provider: str,
        issuer: str,
        jwk: Mapping[str, Any],
        delegation_domain: str | None = None,
    ) -> None:
        from joserfc.jwk import RSAKey

        key = RSAKey.import_key(dict(jwk))
        with self._lock:
            self._keys[(provider, issuer)] = key
            if delegation_domain:
                self._delegation[(provider, issuer)] = delegation_domain.lower()
            else:
                self._delegation.pop((provider, issuer), None)

    def may_act_as(self, provider: str, issuer: str, subject: str) -> bool:
        """Whether the account was granted delegation in `subject`'s domain. Google refuses
        a `sub` the account has no delegation for at the token endpoint."""
        with self._lock:
            domain = self._delegation.get((provider, issuer))
        return domain is not None and subject.rpartition("@")[2].lower() == domain

    def verify(self, provider: Provider, assertion: str, audience: str) -> dict[str, Any]:
        from joserfc import jwt
        from joserfc.errors import JoseError
        from joserfc.jws import extract_compact

        try:
            # Read who claims to sign it; the signature is checked with that one's key next.
            unverified = json.loads(extract_compact(assertion.encode()).payload)
        except (JoseError, ValueError) as exc:
            raise AssertionRefused(f"Invalid JWT: {type(exc).__name__}") from None
        issuer = str(unverified.get("iss") or "") if isinstance(unverified, dict) else ""
        with self._lock:
            key = self._keys.get((provider.name, issuer))
        if key is None:
            raise AssertionRefused("Invalid JWT Signature.")
        try:
            claims = jwt.decode(assertion, key, algorithms=["RS256"]).claims
        except (JoseError, ValueError):
            raise AssertionRefused("Invalid JWT Signature.") from None
        now = time.time()
        exp, iat = claims.get("exp"), claims.get("iat")
        if claims.get("aud") != audience:
            raise AssertionRefused("Invalid JWT: the aud claim is not this token endpoint.")
        if (
            not isinstance(exp, int)
            or not isinstance(iat, int)
            or exp - iat > MAX_ASSERTION_SECONDS
        ):
            raise AssertionRefused("Invalid JWT: Token must be a short-lived token (60 minutes).")
        if exp <= now - 60:
            raise AssertionRefused(
                "Invalid JWT: Token must be a short-lived token and in a reasonable "
                "timeframe. Check your iat and exp values."
            )
        return dict(claims)
