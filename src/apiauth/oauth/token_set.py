"""What a provider's token endpoint gave us, in one shape for every provider."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any


@dataclass(frozen=True, repr=False)
class TokenSet:
    access_token: str
    refresh_token: str | None
    token_type: str
    expires_at: datetime | None
    granted_scopes: tuple[str, ...]
    extra: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        # Never print a token, even in a traceback.
        return (
            f"TokenSet(token_type={self.token_type!r}, expires_at={self.expires_at!r}, "
            f"granted_scopes={self.granted_scopes!r}, has_refresh_token="
            f"{self.refresh_token is not None})"
        )

    def expires_within(self, margin: timedelta, now: datetime) -> bool:
        """Tokens without an expiry never need a refresh for time's sake."""
        return self.expires_at is not None and self.expires_at - now <= margin

    def refreshed_with(self, new: TokenSet) -> TokenSet:
        """Merge a refresh response: a response without a refresh token keeps the old one."""
        return replace(
            new,
            refresh_token=new.refresh_token or self.refresh_token,
            extra={**self.extra, **new.extra},
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "token_type": self.token_type,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "granted_scopes": list(self.granted_scopes),
            "extra": dict(self.extra),
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
        )
