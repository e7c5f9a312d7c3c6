"""Server settings, read once from `APIAUTH_*` environment variables.

This is the one place a server setting is named. The client library (`apiauth.client`) reads
its own two variables, `APIAUTH_TOKEN` and `APIAUTH_URL`, without importing this module, so
that `pip install apiauth` stays free of pydantic.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PUBLIC_URL = "http://127.0.0.1:8000"


class Settings(BaseSettings):
    """Every `APIAUTH_*` setting of the server, with its default."""

    model_config = SettingsConfigDict(env_prefix="APIAUTH_", extra="ignore")

    data_dir: Path = Field(
        default=Path(".apiauth"),
        description="Directory for the SQLite database and the master key file.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the database, e.g. "
        "`postgresql+psycopg://postgres@127.0.0.1:5432/apiauth`. "
        "Default: SQLite file `apiauth.db` in the data dir.",
    )
    public_url: str = Field(
        default=DEFAULT_PUBLIC_URL,
        description="Base URL users and providers reach the server at; "
        "the OAuth redirect URI is `<public_url>/oauth/callback`.",
    )
    master_key: str | None = Field(
        default=None,
        description="Key-encryption key(s), base64url, comma-separated, newest first. "
        "Default: the key file `master.key` in the data dir, created with mode 0600.",
    )
    providers_file: Path | None = Field(
        default=None,
        description="TOML file of custom providers, in the format of the built-in catalog.",
    )
    emulator_url: str | None = Field(
        default=None,
        description="Base URL of a provider emulator to send every provider's OAuth and API "
        "calls to. `serve --demo` sets it to its own `/_emulator`.",
    )
    emulator_token_ttl: int | None = Field(
        default=None,
        ge=1,
        description="Lifetime in seconds of the access tokens the emulator issues for "
        "providers whose tokens expire (default: the provider's own, e.g. 3600).",
    )
    refresh_margin_seconds: int = Field(
        default=300,
        ge=0,
        description="A token that expires within this many seconds is refreshed before "
        "it is handed out.",
    )
    validate_interval_seconds: int = Field(
        default=3600,
        ge=1,
        description="How often a refreshable token without an expiry (Salesforce) is checked "
        "at the provider's who-am-I endpoint; a refused token is refreshed.",
    )
    refresh_lease_seconds: int = Field(
        default=60,
        ge=1,
        description="How long a process may hold a refresh before another may take it over "
        "(a process that dies mid-refresh loses it after this).",
    )
    read_cache_seconds: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="How long a process may answer a secrets read from memory (the token "
        "found valid, the encoded answer) before asking the database again. At most 1 s: "
        "the bound on how long a token revoked on another replica keeps working. 0: ask the "
        "database on every read.",
    )
    refresher_recheck_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="With nothing due, how often the refresher looks for work that another "
        "replica scheduled or left behind (a lease of a process that died).",
    )
    refresh_concurrency: int = Field(
        default=8,
        ge=1,
        le=256,
        description="Refreshes the background refresher runs at once.",
    )
    http_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Timeout of each call apiauth makes to a provider.",
    )
    delivery_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Timeout of each deploy hook or webhook call; a slower receiver's "
        "delivery is retried.",
    )
    delivery_retry_seconds: float = Field(
        default=5.0,
        gt=0,
        description="Wait before retrying a failed deploy hook or webhook delivery; it "
        "doubles with each failure (with jitter, at most an hour), 10 attempts in all.",
    )
    log_level: str = Field(default="INFO", description="Python logging level of the server.")
    connect_link_seconds: int = Field(
        default=1800,
        ge=60,
        le=86400,
        description="How long a visitor's connect link (`POST /api/v1/connect-sessions`) "
        "stays usable; it is single use either way.",
    )
    rate_limit_per_token: float = Field(
        default=50.0,
        ge=0,
        description="Requests per second one site, function or personal access token may "
        "make, on average (0: no limit); each process counts on its own.",
    )
    rate_limit_burst: int = Field(
        default=100,
        ge=1,
        description="Requests one token may make at once before `rate_limit_per_token` applies.",
    )
    rate_limit_oauth_starts: int = Field(
        default=30,
        ge=0,
        description="OAuth flows one member, and one client address, may start per minute "
        "(0: no limit).",
    )
    allow_loopback_urls: bool = Field(
        default=False,
        description="Let deploy hooks, webhooks and custom providers use loopback addresses "
        "(127.0.0.1, ::1), over http too. `serve --demo` and the tests turn it on.",
    )
    allow_private_urls: bool = Field(
        default=False,
        description="Let deploy hooks, webhooks and custom providers use private addresses "
        "(10/8, 172.16/12, 192.168/16, fc00::/7), still over https only.",
    )

    @property
    def redirect_uri(self) -> str:
        return self.public_url.rstrip("/") + "/oauth/callback"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'apiauth.db').resolve()}"

    @property
    def key_file(self) -> Path:
        return self.data_dir / "master.key"


def oauth_app_from_env(provider: str) -> tuple[str | None, str | None]:
    """`APIAUTH_<PROVIDER>_CLIENT_ID` / `_CLIENT_SECRET`; dashes in names become underscores."""
    stem = "APIAUTH_" + provider.upper().replace("-", "_")
    return os.environ.get(stem + "_CLIENT_ID"), os.environ.get(stem + "_CLIENT_SECRET")
