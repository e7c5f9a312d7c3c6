"""What a provider's token endpoint gave us, in one shape for every provider and auth mode.

A pasted credential is a token set too: an API key is its `access_token` (`auth_mode`
"api_key"), basic credentials are `username` and the password as `access_token`. The mode
travels with the sealed token set, so that every reader dispatches on it
(`apiauth.oauth.modes`) without another column or a catalog lookup."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from apiauth.providers import AuthMode


@dataclass(frozen=True, repr=False)
class TokenSet:
    access_token: str
    refresh_token: str | None
    token_type: str
    expires_at: datetime | None
    granted_scopes: tuple[str, ...]
    extra: Mapping[str, str] = field(default_factory=dict)
    #: When the refresh token dies whatever happens (the provider's `refresh_token_expires_in`,
    #: a JWT refresh token's `exp`, or the catalog's `refresh_token_lifetime`), if known.
    refresh_expires_at: datetime | None = None
    #: When it dies unless used before (the catalog's `refresh_token_idle_lifetime`).
    refresh_idle_expires_at: datetime | None = None
    auth_mode: AuthMode = "oauth2"
    username: str | None = None

    def __repr__(self) -> str:
        # Never print a token, even in a traceback.
        return (
            f"TokenSet(auth_mode={self.auth_mode!r}, token_type={self.token_type!r}, "
            f"expires_at={self.expires_at!r}, "
            f"granted_scopes={self.granted_scopes!r}, has_refresh_token="
            f"{self.refresh_token is not None})"
        )

    def expires_within(self, margin: timedelta, now: datetime) -> bool:
        """Tokens without an expiry never need a refresh for time's sake."""
        return self.expires_at is not None and self.expires_at - now <= margin

    def refreshed_with(self, new: TokenSet) -> TokenSet:
        """Merge a refresh response: a response without a refresh token keeps the old one
        (and what is known of its expiry)."""
        kept = new.refresh_token is None
        return replace(
            new,
            refresh_token=new.refresh_token or self.refresh_token,
            extra={**self.extra, **new.extra},
            refresh_expires_at=new.refresh_expires_at
            or (self.refresh_expires_at if kept else None),
            refresh_idle_expires_at=new.refresh_idle_expires_at
            or (self.refresh_idle_expires_at if kept else None),
        )

    def to_json(self) -> dict[str, Any]:
        mode: dict[str, Any] = {}
        if self.auth_mode != "oauth2":  # what was sealed before the modes stays byte-equal
            mode = {"auth_mode": self.auth_mode, "username": self.username}
        return {
            **mode,
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "token_type": self.token_type,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "granted_scopes": list(self.granted_scopes),
            "extra": dict(self.extra),
            "refresh_expires_at": _iso(self.refresh_expires_at),
            "refresh_idle_expires_at": _iso(self.refresh_idle_expires_at),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TokenSet:
        expires_at = data.get("expires_at")
        return cls(
            access_token=data["access_token"],
            refresh_token=data.get("refresh_token"),
            token_type=data.get("token_type") or "bearer",
            expires_at=datetime.fromisoformat(expires_at).astimezone(UTC) if expires_at else None,
            granted_scopes=tuple(data.get("granted_scopes") or ()),
            extra=dict(data.get("extra") or {}),
            refresh_expires_at=_moment(data.get("refresh_expires_at")),
            refresh_idle_expires_at=_moment(data.get("refresh_idle_expires_at")),
            auth_mode=cast(AuthMode, data.get("auth_mode") or "oauth2"),
            username=data.get("username"),
        )


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _moment(text: Any) -> datetime | None:
    return datetime.fromisoformat(text).astimezone(UTC) if isinstance(text, str) and text else None
