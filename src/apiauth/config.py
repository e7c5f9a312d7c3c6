"""Server settings, read once from `APIAUTH_*` environment variables.

This is the one place a server setting is named. The client library (`apiauth.client`) reads
its own two variables, `APIAUTH_TOKEN` and `APIAUTH_URL`, without importing this module, so
that `pip install apiauth` stays free of pydantic.
"""

from __future__ import annotations

import ipaddress
import os
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PUBLIC_URL = "http://127.0.0.1:8000"


def parse_networks(value: str) -> tuple[IPv4Network | IPv6Network, ...]:
    """Comma-separated addresses or CIDRs (`trusted_proxies`); ValueError names the entry
    that is neither."""
    found: list[IPv4Network | IPv6Network] = []
    for entry in (part.strip() for part in value.split(",")):
        if not entry:
            continue
        try:
            found.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"{entry[:60]!r} is not an IP address or CIDR") from None
    return tuple(found)


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
        description="How long before it expires a token is refreshed, at most: the margin is "
        "the smaller of this and a fifth of the token's lifetime, so that a connection is "
        "refreshed about once per lifetime, whether its tokens live 5 seconds or 8 hours.",
    )
    expiry_warning_days: float = Field(
        default=14,
        ge=0,
        description="How many days before its refresh token dies (`refresh_expires_at`) a "
        "connection fires the `connection.expiring` webhook (once) and the dashboard asks "
        "to re-authorize it.",
    )
    validate_interval_seconds: int = Field(
        default=3600,
        ge=1,
        description="How often a refreshable token without an expiry (Salesforce) is checked "
        "at the provider's who-am-I endpoint (a refused token is refreshed), and a pasted API "
        "key or basic credential at its verification endpoint (a refused one needs a new one).",
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
        "make, on average (0: no limit), in the whole deployment: each server process enforces "
        "its share among the server processes alive.",
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
    rate_limit_bad_tokens: int = Field(
        default=60,
        ge=0,
        description="Requests with a wrong site, function or personal access token one "
        "client address may make per minute; beyond that every token-authenticated request "
        "from it is answered 429 with Retry-After until the minute has passed (0: no limit). "
        "Slows token guessing and credential-stuffing floods at their source.",
    )
    allow_loopback_urls: bool = Field(
        default=False,
        description="Let deploy hooks, webhooks and providers use loopback addresses "
        "(127.0.0.1, ::1), over http too. `serve --demo` and the tests turn it on.",
    )
    allow_private_urls: bool = Field(
        default=False,
        description="Let deploy hooks, webhooks and providers use private addresses "
        "(10/8, 172.16/12, 192.168/16, fc00::/7), still over https only.",
    )
    provider_hosts: str = Field(
        default="",
        description="Comma-separated host names of providers you run on a private network "
        "or this machine (a self-hosted GitLab or Keycloak): provider URLs on these hosts "
        "may resolve to private or loopback addresses (https, or http to loopback), without "
        "opening deploy hooks and webhooks to them.",
    )
    trusted_proxies: str = Field(
        default="",
        description="Comma-separated addresses or CIDRs of your reverse proxies (e.g. "
        "`10.0.0.0/8,127.0.0.1`). Only a request arriving from one of them has its "
        "`Forwarded` / `X-Forwarded-For` believed for the client address that the audit log, "
        "rate limits and sign-in throttle use. Default: none; every request's client is its "
        "TCP peer.",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _trusted_proxies_parse(cls, value: str) -> str:
        parse_networks(value)
        return value

    @property
    def trusted_proxy_networks(self) -> tuple[IPv4Network | IPv6Network, ...]:
        return parse_networks(self.trusted_proxies)

    provider_recheck_seconds: int = Field(
        default=6 * 3600,
        ge=60,
        description="How often the metadata of providers added by URL is fetched again "
        "(rotated endpoints are followed; a change that weakens security is refused and "
        "shown). A refresh failure of one of their connections re-checks sooner.",
    )

    housekeeping_interval_seconds: float = Field(
        default=600.0,
        ge=1,
        le=86400,
        description="How often each server process prunes what has outlived its use: "
        "expired function tokens, finished or expired OAuth flows and visitor connect links, "
        "expired dashboard sessions, old deliveries (`delivery_retention_days`). Safe in "
        "every process and replica at once: each takes rows the others are not deleting.",
    )
    housekeeping_batch_size: int = Field(
        default=500,
        ge=1,
        le=100_000,
        description="Rows deleted per transaction by housekeeping, so that pruning a large "
        "backlog never holds locks or the SQLite writer for long.",
    )
    delivery_retention_days: float = Field(
        default=30.0,
        gt=0,
        description="How long delivered and given-up deploy hook and webhook deliveries "
        "are kept (for `apiauth doctor` and investigations) before housekeeping prunes them.",
    )

    @property
    def provider_host_names(self) -> tuple[str, ...]:
        return tuple(h.strip() for h in self.provider_hosts.split(",") if h.strip())

    @property
    def client_metadata_url(self) -> str:
        """The Client ID Metadata Document apiauth serves: its URL is its OAuth client id."""
        return self.public_url.rstrip("/") + "/oauth/client-metadata.json"

    log_format: Literal["text", "json"] = Field(
        default="text",
        description="`text`: one readable line per event; `json`: one JSON object per line "
        "(timestamp, level, logger, message, request id, site, provider, outcome).",
    )
    access_log: bool = Field(
        default=False,
        description="Log one line per HTTP request (uvicorn's access log, in `log_format`, "
        "query values and link tokens redacted). Off by default: it costs the read path "
        "a third to a half of its throughput.",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="Serve Prometheus metrics at `GET /metrics` to callers sending "
        "`Authorization: Bearer <this>` (also required on `metrics_port` when set).",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Also serve `/metrics` on this port, on `metrics_host` (`apiauth "
        "refresher` serves its metrics only here).",
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        description="Interface of `metrics_port`; loopback unless the scraper is elsewhere.",
    )
    kms: Literal["aws"] | None = Field(
        default=None,
        description="Wrap the key-encryption keys with a key management service: `aws` (AWS "
        "KMS, needs `pip install 'apiauth[kms]'` and `kms_key_id`). Default: the local key ring.",
    )
    kms_key_id: str | None = Field(
        default=None,
        description="The KMS key that wraps the key-encryption keys (AWS: key id, ARN or "
        "alias/NAME). AWS credentials, region and endpoint come from boto3's usual settings.",
    )
    kms_cache_seconds: float = Field(
        default=300.0,
        gt=0,
        le=86400,
        description="How long a key unwrapped by the KMS is used without asking it again. "
        "After that a refusal (key disabled, access revoked) takes effect at once; a KMS that "
        "cannot be reached leaves the key in use.",
    )

    @property
    def metrics_enabled(self) -> bool:
        return self.metrics_token is not None or self.metrics_port is not None

    @property
    def redirect_uri(self) -> str:
        return self.public_url.rstrip("/") + "/oauth/callback"

    def listening_on(self, host: str, port: int) -> Settings:
        """These settings for a server on `host:port`: without `APIAUTH_PUBLIC_URL`, the
        public URL (setup link, redirect URI, demo emulator) is that port's, not 8000's."""
        if "public_url" in self.model_fields_set:
            return self
        # A wildcard bind is reached from this machine at the loopback address.
        reachable = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host  # noqa: S104
        if ":" in reachable:
            reachable = f"[{reachable}]"  # an IPv6 literal
        return self.model_copy(update={"public_url": f"http://{reachable}:{port}"})

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
