"""`apiauth doctor`: check a deployment from where the command runs and say, for each thing
that is wrong, what and how to fix it.

The checks only look: no database is created or migrated, no key file is made, nothing is
written (a broker is never opened, since opening one does all of that). Each check stands on
its own and turns whatever goes wrong into its own `fail`, so one broken part does not hide
the others; the checks that need the database are skipped, saying so, when it does not
answer.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from sqlalchemy import Engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from apiauth.config import Settings
from apiauth.domain.broker import default_oauth_apps, emulator_url_for
from apiauth.domain.key_rotation import records_by_key_in
from apiauth.domain.master_keys import DatabaseKeyStore
from apiauth.domain.replicas import HEARTBEAT_SECONDS, recent_replicas
from apiauth.errors import ConfigurationError
from apiauth.kms import KmsError, kms_service
from apiauth.providers import KEY_MODES, CatalogError, load_catalog
from apiauth.store.db import create_db_engine, database_now, schema_revisions, session_factory
from apiauth.store.models import AuthState, Connection, OAuthApp, Site, TeamProvider, utcnow
from apiauth.url_policy import is_loopback_host
from apiauth.vault import KeyConfigError, KeyFile, KeyRing, MasterKey

__all__ = ["Check", "DoctorReport", "Status", "run_doctor"]

Status = Literal["ok", "warn", "fail", "skip"]

CLOCK_WARN_SECONDS = 5.0
CLOCK_FAIL_SECONDS = 60.0
SEEN_RECENTLY = timedelta(seconds=3 * HEARTBEAT_SECONDS)
RECENT_FLOWS = timedelta(days=7)
HTTP_TIMEOUT_SECONDS = 5.0
DATABASE_TIMEOUT_SECONDS = 5


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    message: str
    fix: str | None = None


@dataclass(frozen=True)
class DoctorReport:
    checks: list[Check]

    @property
    def problems(self) -> int:
        return sum(check.status == "fail" for check in self.checks)

    @property
    def warnings(self) -> int:
        return sum(check.status == "warn" for check in self.checks)

    @property
    def ok(self) -> bool:
        return self.problems == 0

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problems": self.problems,
            "warnings": self.warnings,
            "checks": [asdict(check) for check in self.checks],
        }


@dataclass
class _Deployment:
    """What the checks share: the settings, the database (when it answers)."""

    settings: Settings
    http: httpx.Client
    clock: Callable[[], datetime]
    engine: Engine | None = None
    sessions: sessionmaker[Session] | None = None
    demo: bool = False


def run_doctor(
    settings: Settings,
    *,
    http: httpx.Client | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> DoctorReport:
    own_http = http is None
    client = http or httpx.Client(timeout=HTTP_TIMEOUT_SECONDS, follow_redirects=False)
    deployment = _Deployment(settings, client, clock)
    checks: list[Check] = []
    try:
        checks.extend(_database(deployment))
        for check in (
            _master_key,
            _kms,
            _public_url,
            _oauth_apps,
            _clock,
            _trusted_proxies,
            _permissions,
            _replicas,
        ):
            try:
                checks.extend(check(deployment))
            except Exception as exc:  # a check that breaks is a finding, not a crash
                checks.append(
                    Check(check.__name__.strip("_"), "fail", f"{type(exc).__name__}: {exc}")
                )
    finally:
        if deployment.engine is not None:
            deployment.engine.dispose()
        if own_http:
            client.close()
    return DoctorReport(checks)


def _first_line(exc: BaseException) -> str:
    text_ = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text_[0][:300] if text_ else type(exc).__name__


# --- database -------------------------------------------------------------------------------


def _database(d: _Deployment) -> Iterable[Check]:
    url = d.settings.resolved_database_url
    try:
        parsed = make_url(url)
    except Exception:
        yield Check(
            "database",
            "fail",
            "APIAUTH_DATABASE_URL is not a database URL",
            "set it to sqlite:///PATH or postgresql+psycopg://USER@HOST:5432/NAME",
        )
        return
    shown = parsed.render_as_string(hide_password=True)
    sqlite_file = parsed.database if parsed.get_backend_name() == "sqlite" else None
    if sqlite_file and not Path(sqlite_file).exists():
        yield Check(
            "database",
            "warn",
            f"there is no database yet at {sqlite_file}",
            "`apiauth db upgrade` (or the first `apiauth serve`) creates it",
        )
        return
    try:
        engine = create_db_engine(url, connect_timeout=DATABASE_TIMEOUT_SECONDS)
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except (DBAPIError, ConfigurationError) as exc:
        yield Check(
            "database",
            "fail",
            f"{shown} does not answer: {_first_line(exc)}",
            "check APIAUTH_DATABASE_URL, that the database server runs and that this user "
            "may connect",
        )
        return
    d.engine, d.sessions = engine, session_factory(engine)
    yield Check("database", "ok", f"{shown} answers")
    current, heads = schema_revisions(engine)
    if current == heads:
        yield Check("schema", "ok", f"migrated to the newest schema ({', '.join(sorted(heads))})")
    elif not current:
        yield Check("schema", "fail", "the database was never migrated", "run `apiauth db upgrade`")
        d.sessions = None  # its tables are not there to look at
    elif current - heads and not heads <= current:
        yield Check(
            "schema",
            "fail",
            f"the database is at revision {', '.join(sorted(current))}, which this apiauth "
            f"({', '.join(sorted(heads))}) does not know: a newer apiauth migrated it",
            "run the apiauth version the servers run",
        )
    else:
        yield Check(
            "schema",
            "fail",
            f"the database is at revision {', '.join(sorted(current))}, this apiauth needs "
            f"{', '.join(sorted(heads))}",
            "run `apiauth db upgrade` (servers migrate at start too)",
        )
    if d.sessions is not None:
        d.demo = emulator_url_for(d.settings, engine, demo=None) is not None


def _needs_database(name: str) -> Check:
    return Check(name, "skip", "skipped: needs the database (see above)")


# --- keys -------------------------------------------------------------------------------------


def _local_ring(settings: Settings) -> KeyRing | None:
    if settings.master_key is not None:
        return KeyRing.from_text(settings.master_key)
    key_file = KeyFile(settings.key_file)
    return key_file.load() if key_file.exists() else None


def _master_key(d: _Deployment) -> Iterable[Check]:
    settings = d.settings
    where = "APIAUTH_MASTER_KEY" if settings.master_key is not None else str(settings.key_file)
    try:
        ring = _local_ring(settings)
    except KeyConfigError as exc:
        yield Check(
            "master key",
            "fail",
            str(exc),
            "restore the key (it is needed to read the tokens); `apiauth keys generate` "
            "prints a new one for a new deployment only",
        )
        return
    if d.sessions is None:
        if ring is None and settings.kms is None:
            yield Check(
                "master key", "warn", f"no key file at {where} yet", "the first start creates it"
            )
        else:
            yield _needs_database("master key")
        return
    local_ids = {key.id for key in ring.keys} if ring is not None else set()
    wrapped = {key.id: key for key in DatabaseKeyStore(d.sessions).all()}
    by_key = records_by_key_in(d.sessions)
    missing = {key_id: n for key_id, n in by_key.items() if key_id not in local_ids | set(wrapped)}
    if missing:
        listed = ", ".join(f"{n} under key {key_id}" for key_id, n in sorted(missing.items()))
        yield Check(
            "master key",
            "fail",
            f"records cannot be opened with any key this deployment has: {listed}",
            f"put the missing key back in {where} (after the active key)",
        )
    elif ring is None and settings.kms is None:
        if by_key:
            yield Check("master key", "fail", f"records are encrypted but {where} is missing")
        else:
            yield Check(
                "master key", "warn", f"no key file at {where} yet", "the first start creates it"
            )
    else:
        shown = f"{len(local_ids)} local key(s) in {where}" if ring is not None else "no local key"
        total = sum(by_key.values())
        yield Check(
            "master key", "ok", f"{shown}, {len(wrapped)} KMS-wrapped; {total} records open"
        )
    if settings.kms is not None:
        local_records = sum(n for key_id, n in by_key.items() if key_id in local_ids)
        if local_records:
            yield Check(
                "key rotation",
                "warn",
                f"{local_records} records are still under the local key though APIAUTH_KMS is set",
                "run `apiauth keys rotate` to move them under the KMS key",
            )
    elif any(key_id in wrapped for key_id in by_key):
        kms_records = sum(n for key_id, n in by_key.items() if key_id in wrapped)
        yield Check(
            "key rotation",
            "warn",
            f"{kms_records} records are under a KMS key though APIAUTH_KMS is not set",
            "set APIAUTH_KMS again, or run `apiauth keys rotate` to move them to the local key",
        )


def _kms(d: _Deployment) -> Iterable[Check]:
    settings = d.settings
    if settings.kms is None:
        yield Check(
            "kms",
            "skip",
            "APIAUTH_KMS is not set: the local key protects the tokens (the database and the "
            "data dir together can read them)",
        )
        return
    if not settings.kms_key_id:
        yield Check(
            "kms", "fail", f"APIAUTH_KMS={settings.kms} without APIAUTH_KMS_KEY_ID", "set it"
        )
        return
    try:
        service = kms_service(settings.kms)
        stored = None
        if d.sessions is not None:
            stored = DatabaseKeyStore(d.sessions).newest_for(settings.kms, settings.kms_key_id)
        if stored is not None:
            MasterKey.from_secret(service.unwrap(stored.wrapped, stored.kms_key_id))
            found = f"unwrapped key-encryption key {stored.id} with {settings.kms_key_id}"
        else:
            found = service.describe(settings.kms_key_id) + "; the first start makes its key"
    except (KmsError, KeyConfigError) as exc:
        yield Check(
            "kms",
            "fail",
            str(exc),
            "check the credentials, region and endpoint boto3 uses (AWS_*), the key's state, "
            "and that this identity may use kms:Decrypt and kms:GenerateDataKey on it",
        )
        return
    yield Check("kms", "ok", found)


# --- the public URL and OAuth apps ----------------------------------------------------------


def _public_url(d: _Deployment) -> Iterable[Check]:
    url = d.settings.public_url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        yield Check(
            "public URL",
            "fail",
            f"APIAUTH_PUBLIC_URL={url} is not an http(s) URL",
            "set it to where people and providers reach apiauth, e.g. https://auth.example.com",
        )
        return
    if parts.scheme == "http" and not d.demo:
        if is_loopback_host(host):
            yield Check(
                "https",
                "warn",
                f"{url} is plain http on this machine: only this machine can sign in and connect",
                "set APIAUTH_PUBLIC_URL to the https URL people use",
            )
        else:
            yield Check(
                "https",
                "fail",
                f"{url} is plain http: sign-in cookies, site tokens and the providers' codes "
                "travel unencrypted",
                "serve apiauth behind TLS and set APIAUTH_PUBLIC_URL=https://…",
            )
    try:
        answer = d.http.get(url.rstrip("/") + "/healthz")
    except httpx.HTTPError as exc:
        yield Check(
            "public URL",
            "fail",
            f"{url} cannot be reached from here ({type(exc).__name__}: {_first_line(exc)})",
            "check that `apiauth serve` runs, the DNS name, the proxy or load balancer in "
            "front, and its TLS certificate",
        )
        return
    if answer.status_code != 200:
        yield Check(
            "public URL",
            "fail",
            f"{url}/healthz answered HTTP {answer.status_code}: something else answers there",
            "point the proxy at `apiauth serve`",
        )
        return
    yield Check("public URL", "ok", f"{url} answers")


def _oauth_apps(d: _Deployment) -> Iterable[Check]:
    settings = d.settings
    if d.sessions is None or d.engine is None:
        yield _needs_database("OAuth apps")
        return
    emulator_url = emulator_url_for(settings, d.engine, demo=None)
    try:
        catalog = load_catalog(settings.providers_file, emulator_url=emulator_url)
    except CatalogError as exc:
        yield Check("OAuth apps", "fail", str(exc), "fix the providers file")
        return
    servers = default_oauth_apps(catalog, emulated=emulator_url is not None)
    with d.sessions() as db:
        in_use = set(
            db.execute(
                select(Site.team_id, Connection.provider)
                .join(Site, Site.id == Connection.site_id)
                .distinct()
            ).all()
        )
        teams = set(db.execute(select(OAuthApp.team_id, OAuthApp.provider)).all())
        # Providers a team added by URL bring their client (a registration, a metadata
        # document) or an OAuth app of the team's; neither is in the catalog.
        added = set(
            db.execute(
                select(TeamProvider.team_id, TeamProvider.name).where(
                    TeamProvider.client_id.is_not(None)
                )
            ).all()
        )
        team_added = set(db.execute(select(TeamProvider.team_id, TeamProvider.name)).all())
        since = d.clock() - RECENT_FLOWS
        # A provider's `redirect_uri_mismatch` (the code our stored message quotes): the app
        # registered with it names another redirect URI than this deployment's.
        refused = sorted(
            set(
                db.scalars(
                    select(AuthState.provider).where(
                        AuthState.created_at >= since, AuthState.outcome.contains("redirect_uri")
                    )
                )
            )
        )
    missing = sorted(
        {
            provider
            for team, provider in in_use
            if provider not in servers
            and (team, provider) not in teams | added
            # a pasted key needs no OAuth app
            and not (provider in catalog and catalog[provider].auth_mode in KEY_MODES)
        }
    )
    redirect = settings.redirect_uri
    for provider in missing:
        stem = "APIAUTH_" + provider.upper().replace("-", "_")
        known = provider in catalog or any(
            (team, provider) in team_added for team, _name in in_use if _name == provider
        )
        yield Check(
            "OAuth apps",
            "fail",
            f"{provider} has connections but no OAuth app"
            + ("" if known else " (and is no longer in the catalog)")
            + ": its refreshes and new connections fail",
            f"set {stem}_CLIENT_ID and {stem}_CLIENT_SECRET, or `apiauth apps set {provider} "
            f"--client-id …`; its redirect URI must be {redirect}",
        )
    for provider in refused:
        yield Check(
            "redirect URI",
            "fail",
            f"{provider} refused the redirect URI in the last {RECENT_FLOWS.days} days",
            f"register {redirect} as the redirect (callback) URI of the {provider} app",
        )
    if not missing:
        used = sorted({provider for _team, provider in in_use})
        detail = f"for {', '.join(used)}" if used else "(no connections yet)"
        yield Check("OAuth apps", "ok", f"configured {detail}; redirect URI {redirect}")


# --- clock, proxies, files, replicas --------------------------------------------------------


def _skew_status(seconds: float) -> Status:
    if abs(seconds) >= CLOCK_FAIL_SECONDS:
        return "fail"
    return "warn" if abs(seconds) >= CLOCK_WARN_SECONDS else "ok"


def _clock(d: _Deployment) -> Iterable[Check]:
    if d.sessions is None:
        yield _needs_database("clock")
        return
    with d.sessions() as db:
        database_clock = database_now(db)
        replicas = recent_replicas(db)
    now = d.clock()
    fix = "run NTP (chrony, systemd-timesyncd) on every machine: token expiry depends on it"
    if database_clock is None:
        yield Check("clock", "ok", "SQLite: the database uses this machine's clock")
    else:
        skew = (now - database_clock).total_seconds()
        status = _skew_status(skew)
        yield Check(
            "clock",
            status,
            f"this machine's clock is {skew:+.1f} s from the database server's",
            fix if status != "ok" else None,
        )
    for replica in replicas:
        skew_ = replica.clock_skew_seconds
        if skew_ is not None and now - replica.seen_at <= SEEN_RECENTLY:
            status = _skew_status(skew_)
            if status != "ok":
                yield Check(
                    "clock",
                    status,
                    f"{replica.role} on {replica.host} (pid {replica.pid}) is {skew_:+.1f} s "
                    "from the database server's clock",
                    fix,
                )


def _trusted_proxies(d: _Deployment) -> Iterable[Check]:
    networks = d.settings.trusted_proxy_networks
    everyone = [str(network) for network in networks if network.prefixlen == 0]
    if everyone:
        yield Check(
            "trusted proxies",
            "warn",
            f"APIAUTH_TRUSTED_PROXIES includes {', '.join(everyone)}: any client can set the "
            "address it is logged, limited and audited as",
            "list only the addresses of your proxies or load balancers",
        )
    elif networks:
        listed = ", ".join(str(network) for network in networks)
        yield Check("trusted proxies", "ok", f"forwarded client addresses believed from {listed}")
    else:
        yield Check(
            "trusted proxies",
            "ok",
            "none: client addresses are the TCP peer's (set APIAUTH_TRUSTED_PROXIES when a "
            "proxy is in front)",
        )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _permissions(d: _Deployment) -> Iterable[Check]:
    settings = d.settings
    data_dir = settings.data_dir
    found = False
    if data_dir.exists():
        found = True
        mode = _mode(data_dir)
        if mode & 0o002:
            yield Check(
                "permissions",
                "fail",
                f"the data dir {data_dir} is writable by everyone (mode {mode:o})",
                f"chmod 700 {data_dir}",
            )
        elif mode & 0o077:
            yield Check(
                "permissions",
                "warn",
                f"the data dir {data_dir} is open to group/others (mode {mode:o})",
                f"chmod 700 {data_dir}",
            )
    files = []
    if settings.master_key is None and settings.key_file.exists():
        files.append((settings.key_file, "the key file", "fail"))
    url = make_url(settings.resolved_database_url)
    if url.get_backend_name() == "sqlite" and url.database and Path(url.database).exists():
        files.append((Path(url.database), "the SQLite database", "warn"))
    for path, what, severity in files:
        found = True
        mode = _mode(path)
        if mode & 0o077:
            yield Check(
                "permissions",
                "fail" if severity == "fail" else "warn",
                f"{what} {path} is readable by group/others (mode {mode:o})",
                f"chmod 600 {path}",
            )
        if path.stat().st_uid != os.getuid():
            yield Check(
                "permissions",
                "warn",
                f"{what} {path} belongs to another user (uid {path.stat().st_uid})",
                f"chown it to the user apiauth runs as (uid {os.getuid()})",
            )
    if not found:
        yield Check("permissions", "skip", f"no data dir at {data_dir} (nothing to check)")


def _replicas(d: _Deployment) -> Iterable[Check]:
    if d.sessions is None:
        yield _needs_database("replicas")
        return
    with d.sessions() as db:
        replicas = recent_replicas(db)
        connections = db.scalar(select(func.count()).select_from(Connection)) or 0
    now = d.clock()
    live = [r for r in replicas if now - r.seen_at <= SEEN_RECENTLY]
    gone = [r for r in replicas if now - r.seen_at > SEEN_RECENTLY]
    if not live:
        yield Check(
            "replicas",
            "warn",
            f"no apiauth process has been seen in the last {SEEN_RECENTLY.seconds} s",
            "start `apiauth serve` with this APIAUTH_DATABASE_URL",
        )
    else:
        listed = ", ".join(
            f"{r.role}{' + refresher' if r.role == 'serve' and r.refresher else ''} on "
            f"{r.host} (pid {r.pid}, {r.version})"
            for r in live
        )
        yield Check(
            "replicas", "ok", f"{len(live)} seen in the last {SEEN_RECENTLY.seconds} s: {listed}"
        )
        if not any(r.refresher for r in live) and connections:
            yield Check(
                "replicas",
                "warn",
                "no process runs the background refresher: tokens are refreshed only when read",
                "run `apiauth refresher`, or `apiauth serve` without --no-refresher",
            )
        versions = sorted({r.version for r in live})
        if len(versions) > 1:
            yield Check(
                "replicas",
                "warn",
                f"replicas run different versions: {', '.join(versions)}",
                "finish the upgrade",
            )
        urls = sorted(
            {r.public_url for r in live if r.public_url and r.public_url != d.settings.public_url}
        )
        if urls:
            yield Check(
                "public URL",
                "warn",
                f"running servers use APIAUTH_PUBLIC_URL={', '.join(urls)}, this shell "
                f"{d.settings.public_url}: the checks above looked at this shell's",
                "run `apiauth doctor` with the servers' settings",
            )
    if gone:
        yield Check(
            "replicas",
            "warn",
            f"{len(gone)} process(es) stopped answering without shutting down, last seen "
            f"{min(r.seen_at for r in gone):%Y-%m-%d %H:%M} UTC",
            "nothing to do if they were killed on purpose; they are forgotten after a day",
        )
