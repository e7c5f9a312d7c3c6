"""Everything the emulator remembers: codes, grants, tokens and counters, behind one lock.

The server may run the emulator on several threads, and a refresh must spend a single-use
refresh token atomically, so every read-modify-write happens inside `EmulatorState._lock`.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from apiauth.providers import RefreshTokenStyle

__all__ = [
    "STAT_NAMES",
    "AuthorizationCode",
    "EmulatorState",
    "Fault",
    "Grant",
    "GrantError",
    "RefreshLifetime",
]

STAT_NAMES = (
    "authorizations",
    "token_exchanges",
    "refreshes",
    "refresh_token_reuse",
    "userinfo_ok",
    "userinfo_rejected",
    "revocations",
    "faults_served",
    "api_calls",
    "api_rejected",
    "keys_verified",
    "keys_refused",
    "client_tokens",
)

CODE_LIFETIME = 600.0


class GrantError(Exception):
    """A token request the emulator refuses, as an RFC 6749 §5.2 error code."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description


@dataclass
class Grant:
    """One consent, and every token issued from it; revoking any of them revokes all."""

    id: int
    provider: str
    client_id: str
    scopes: tuple[str, ...]
    revoked: bool = False
    refreshes: int = 0
    created_at: float = 0.0
    #: A service account's delegated user (the assertion's `sub`), None when it acts as
    #: itself.
    subject: str | None = None


@dataclass
class AuthorizationCode:
    provider: str
    client_id: str
    redirect_uri: str
    scopes: tuple[str, ...]
    code_challenge: str | None
    expires_at: float
    used: bool = False


@dataclass
class _AccessToken:
    grant: Grant
    expires_at: float | None


@dataclass
class _RefreshToken:
    grant: Grant
    spent: bool = False
    expires_at: float | None = None


@dataclass(frozen=True)
class RefreshLifetime:
    """How long a provider's refresh tokens live: `seconds` from their own issue (Box: each
    new one 60 days), or from the consent when `from_consent` (Spotify: 6 months after the
    authorization, however often refreshed)."""

    seconds: int
    from_consent: bool = False


@dataclass(frozen=True)
class Fault:
    """What an endpoint does instead of answering at once (fault injection): wait
    `delay_seconds` (a slow or hanging provider), then answer `status` with `body` — or, when
    `status` is None, answer as usual after the wait (a request that was processed although
    its caller may have died waiting)."""

    status: int | None
    body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    delay_seconds: float = 0.0
    # Garbage instead of JSON: `raw_body` sent as is with `content_type`, and, with
    # `trickle_seconds`, one byte at a time that far apart (a slow-loris provider).
    raw_body: str | None = None
    raw_body_repeat: int = 1  # a body larger than the admin call may carry
    content_type: str = "application/json"
    trickle_seconds: float = 0.0


def s256(verifier: str) -> str:
    """The PKCE S256 challenge of a verifier (RFC 7636 §4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class EmulatorState:
    def __init__(self, providers: Iterable[str], clock: Callable[[], float] = time.monotonic):
        self._providers = tuple(providers)
        self._clock = clock
        self._offset = 0.0
        self._lock = threading.Lock()
        self._grants: list[Grant] = []
        self._ids = itertools.count(1)
        self._codes: dict[str, AuthorizationCode] = {}
        self._access: dict[str, _AccessToken] = {}
        self._refresh: dict[str, _RefreshToken] = {}
        self._stats: dict[str, dict[str, int]] = {}
        # Fault injection: `POST /_admin/faults` queues faults; every provider endpoint asks
        # `next_fault()` first and, if it gets one, behaves as the fault says.
        self._faults: dict[tuple[str, str], list[Fault]] = {}
        self.reset()

    def _now(self) -> float:
        return self._clock() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the emulator's clock on (`POST /_admin/clock`): tokens, codes and refresh
        tokens age as if that much time had passed, without a test waiting for it."""
        with self._lock:
            self._offset += seconds

    def offset(self) -> float:
        """How far `advance` moved the clock: wall-clock checks (a GitHub App's JWT) add it."""
        with self._lock:
            return self._offset

    def reset(self) -> None:
        with self._lock:
            self._offset = 0.0
            self._grants.clear()
            self._codes.clear()
            self._access.clear()
            self._refresh.clear()
            self._faults.clear()
            self._stats = {p: dict.fromkeys(STAT_NAMES, 0) for p in self._providers}

    def count(self, provider: str, stat: str) -> None:
        with self._lock:
            self._count(provider, stat)

    def _count(self, provider: str, stat: str) -> None:
        self._stats.setdefault(provider, dict.fromkeys(STAT_NAMES, 0))[stat] += 1

    def stats(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {p: dict(counters) for p, counters in self._stats.items()}

    # --- fault injection hook ------------------------------------------------------------

    def add_fault(self, provider: str, endpoint: str, fault: Fault, times: int = 1) -> None:
        """Answer the next `times` calls to `endpoint` ("authorize", "token", "userinfo",
        "revoke") of `provider` with `fault`."""
        with self._lock:
            self._faults.setdefault((provider, endpoint), []).extend([fault] * times)

    def next_fault(self, provider: str, endpoint: str) -> Fault | None:
        with self._lock:
            queue = self._faults.get((provider, endpoint))
            if not queue:
                return None
            self._stats[provider]["faults_served"] += 1
            return queue.pop(0)

    # --- authorization codes -------------------------------------------------------------

    def issue_code(
        self,
        *,
        provider: str,
        client_id: str,
        redirect_uri: str,
        scopes: tuple[str, ...],
        code_challenge: str | None,
    ) -> str:
        code = secrets.token_urlsafe(24)
        with self._lock:
            self._codes[code] = AuthorizationCode(
                provider=provider,
                client_id=client_id,
                redirect_uri=redirect_uri,
                scopes=scopes,
                code_challenge=code_challenge,
                expires_at=self._now() + CODE_LIFETIME,
            )
            self._count(provider, "authorizations")
        return code

    def exchange_code(
        self,
        *,
        provider: str,
        code: str,
        client_id: str,
        redirect_uri: str | None,
        code_verifier: str | None,
        access_token: str,
        refresh_token: Callable[[tuple[str, ...]], str | None],
        lifetime: int | None,
        refresh_lifetime: RefreshLifetime | None = None,
        max_grants_per_scopes: int | None = None,
    ) -> Grant:
        """Spend `code` and store the tokens issued for it; `refresh_token(scopes)` makes the
        refresh token, or None when this grant gets none. With `max_grants_per_scopes`, the
        oldest live grants of the same client and scopes beyond that many are revoked
        (GitHub's ten tokens per user, app and scopes)."""
        with self._lock:
            found = self._codes.get(code)
            if found is None or found.provider != provider:
                raise GrantError("invalid_grant", "The authorization code is unknown.")
            if found.used:
                raise GrantError("invalid_grant", "The authorization code was already used.")
            found.used = True
            if self._now() >= found.expires_at:
                raise GrantError("invalid_grant", "The authorization code has expired.")
            if found.client_id != client_id:
                raise GrantError("invalid_grant", "The code was issued to another client.")
            if redirect_uri != found.redirect_uri:
                raise GrantError(
                    "invalid_grant", "redirect_uri differs from the authorization request."
                )
            if found.code_challenge is None:
                if code_verifier is not None:
                    raise GrantError(
                        "invalid_grant", "code_verifier sent, but no code_challenge was."
                    )
            elif code_verifier is None:
                raise GrantError("invalid_grant", "code_verifier is required (PKCE).")
            elif not secrets.compare_digest(s256(code_verifier), found.code_challenge):
                raise GrantError("invalid_grant", "code_verifier does not match code_challenge.")
            grant = Grant(
                next(self._ids), provider, client_id, found.scopes, created_at=self._now()
            )
            if max_grants_per_scopes is not None:
                same = [
                    g
                    for g in self._grants
                    if (g.provider, g.client_id, set(g.scopes))
                    == (provider, client_id, set(grant.scopes))
                    and not g.revoked
                ]
                for old in same[: max(0, len(same) - max_grants_per_scopes + 1)]:
                    old.revoked = True
            self._grants.append(grant)
            self._store_access(grant, access_token, lifetime)
            new_refresh = refresh_token(found.scopes)
            if new_refresh is not None:
                self._refresh[new_refresh] = self._new_refresh(grant, refresh_lifetime)
            self._count(provider, "token_exchanges")
            return grant

    def issue_client_token(
        self,
        *,
        provider: str,
        client_id: str,
        scopes: tuple[str, ...],
        access_token: str,
        lifetime: int | None,
        subject: str | None = None,
    ) -> Grant:
        """A client-credentials grant (RFC 6749 §4.4): a token for the client itself, or
        (a service account's, with `subject`) for the user it acts as by delegation."""
        with self._lock:
            grant = Grant(
                next(self._ids),
                provider,
                client_id,
                scopes,
                created_at=self._now(),
                subject=subject,
            )
            self._store_access(grant, access_token, lifetime)
            self._count(provider, "client_tokens")
            return grant

    def _new_refresh(self, grant: Grant, lifetime: RefreshLifetime | None) -> _RefreshToken:
        if lifetime is None:
            return _RefreshToken(grant)
        start = grant.created_at if lifetime.from_consent else self._now()
        return _RefreshToken(grant, expires_at=start + lifetime.seconds)

    # --- tokens --------------------------------------------------------------------------

    def _store_access(self, grant: Grant, token: str, lifetime: int | None) -> None:
        expires_at = None if lifetime is None else self._now() + lifetime
        self._access[token] = _AccessToken(grant, expires_at)

    def refresh(
        self,
        *,
        provider: str,
        client_id: str,
        refresh_token: str,
        style: RefreshTokenStyle,
        access_token: str,
        new_refresh_token: Callable[[], str],
        lifetime: int | None,
        refresh_lifetime: RefreshLifetime | None = None,
    ) -> tuple[Grant, str | None]:
        """Use a refresh token; returns the grant and the refresh token to hand back, which
        is a new one when the provider rotates, the same one when reusable, None when the
        client should keep the one it has."""
        with self._lock:
            found = self._refresh.get(refresh_token)
            if found is None or found.grant.provider != provider or style == "none":
                raise GrantError("invalid_grant", "The refresh token is unknown.")
            grant = found.grant
            if grant.client_id != client_id:
                raise GrantError("invalid_grant", "The refresh token belongs to another client.")
            if grant.revoked:
                raise GrantError("invalid_grant", "The refresh token has been revoked.")
            if found.spent:
                self._count(provider, "refresh_token_reuse")
                raise GrantError("invalid_grant", "The refresh token has already been used.")
            if found.expires_at is not None and self._now() >= found.expires_at:
                raise GrantError("invalid_grant", "The refresh token has expired.")
            grant.refreshes += 1
            handed_back: str | None = refresh_token
            if style == "rotating":
                found.spent = True
                handed_back = new_refresh_token()
                self._refresh[handed_back] = self._new_refresh(grant, refresh_lifetime)
            elif style == "may_rotate":
                # Spotify "may" return a new refresh token; do it every other time so clients
                # meet both answers. The old one keeps working, as Spotify's does.
                handed_back = None
                if grant.refreshes % 2 == 0:
                    handed_back = new_refresh_token()
                    self._refresh[handed_back] = self._new_refresh(grant, refresh_lifetime)
            self._store_access(grant, access_token, lifetime)
            self._count(provider, "refreshes")
            return grant, handed_back

    def import_grants(
        self, provider: str, client_id: str, scopes: tuple[str, ...], refresh_tokens: Iterable[str]
    ) -> int:
        """Accept refresh tokens issued outside a consent flow, one grant each: benchmarks
        write their connections straight into the database, then tell the emulator."""
        with self._lock:
            count = 0
            for token in refresh_tokens:
                grant = Grant(next(self._ids), provider, client_id, scopes, created_at=self._now())
                self._refresh[token] = _RefreshToken(grant)
                count += 1
            return count

    def live_grant(self, provider: str, access_token: str, *, api: bool = False) -> Grant | None:
        """The grant of an issued, unexpired, unrevoked access token of `provider`; counted
        as a who-am-I call, or with `api` as a call to one of the API endpoints."""
        with self._lock:
            found = self._access.get(access_token)
            ok = (
                found is not None
                and found.grant.provider == provider
                and not found.grant.revoked
                and (found.expires_at is None or self._now() < found.expires_at)
            )
            if api:
                self._count(provider, "api_calls" if ok else "api_rejected")
            else:
                self._count(provider, "userinfo_ok" if ok else "userinfo_rejected")
            return found.grant if ok and found is not None else None

    def grant_of(self, provider: str, token: str) -> Grant | None:
        """The live grant of an issued access token, uncounted (a self-revocation)."""
        with self._lock:
            found = self._access.get(token)
            if found is None or found.grant.provider != provider or found.grant.revoked:
                return None
            if found.expires_at is not None and self._now() >= found.expires_at:
                return None
            return found.grant

    def revoke_token(self, provider: str, client_id: str, token: str) -> bool:
        """Revoke the grant an access or refresh token belongs to; False if none matched."""
        with self._lock:
            found = self._access.get(token) or self._refresh.get(token)
            if found is None:
                return False
            grant = found.grant
            if grant.provider != provider or grant.client_id != client_id or grant.revoked:
                return False
            grant.revoked = True
            self._count(provider, "revocations")
            return True

    def revoke_client(self, provider: str, client_id: str) -> int:
        """Revoke every live grant of a client (Stripe's deauthorize); how many there were."""
        with self._lock:
            every = [t.grant for t in self._access.values()]
            every += [t.grant for t in self._refresh.values()]
            grants = {
                g.id: g
                for g in every
                if g.provider == provider and g.client_id == client_id and not g.revoked
            }
            for grant in grants.values():
                grant.revoked = True
            if grants:
                self._count(provider, "revocations")
            return len(grants)
