"""`apiauth …`: thin commands that parse, call a domain service and print.

Operator commands (users, tokens, sites, connect, keys, db) work on the database directly,
like `manage.py`, so they work on a fresh data dir before any server runs. `secrets` (and
`run`) are what builds use: they go through the HTTP API with APIAUTH_TOKEN, like functions.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

from apiauth.client import DEFAULT_FUNCTION_TOKEN_TTL
from apiauth.config import Settings
from apiauth.domain import audit, connections, key_rotation, members, oauth_apps, sites
from apiauth.domain.broker import Broker, open_broker
from apiauth.domain.token_store import CONNECTED

app = typer.Typer(
    name="apiauth",
    help="Self-hosted API authentication broker: connect OAuth providers once, hand fresh "
    "bearer tokens to builds and functions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
users_app = typer.Typer(help="Team members who sign in to the dashboard.", no_args_is_help=True)
tokens_app = typer.Typer(help="Personal access tokens for the REST API.", no_args_is_help=True)
sites_app = typer.Typer(help="Sites and their API Authentication.", no_args_is_help=True)
providers_app = typer.Typer(help="The provider catalog.", no_args_is_help=True)
connections_app = typer.Typer(help="A site's provider connections.", no_args_is_help=True)
apps_app = typer.Typer(
    help="OAuth apps (client id and secret) registered with providers.", no_args_is_help=True
)
keys_app = typer.Typer(help="Master keys that encrypt tokens at rest.", no_args_is_help=True)
db_app = typer.Typer(help="The database schema.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(tokens_app, name="tokens")
app.add_typer(sites_app, name="sites")
app.add_typer(providers_app, name="providers")
app.add_typer(connections_app, name="connections")
app.add_typer(apps_app, name="apps")
app.add_typer(keys_app, name="keys")
app.add_typer(db_app, name="db")

# Piped output is read by scripts: no wrapping and no cropped table cells there.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 10_000)
err = Console(stderr=True, soft_wrap=True)


@contextmanager
def broker_for_command() -> Iterator[Broker]:
    broker = open_broker(Settings())
    try:
        yield broker
    finally:
        broker.close()


def _acting_member(broker: Broker, email: str | None) -> members.MemberView:
    return members.get_member(broker, email)


def _when(value: object) -> str:
    return "never" if value is None else str(value)


MemberOption = Annotated[
    Optional[str],  # noqa: UP045 - Typer reads the annotation at run time
    typer.Option("--member", help="Act as this member (default: the team's owner)."),
]


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    demo: Annotated[
        bool,
        typer.Option(help="Serve a provider emulator and send every provider to it (offline)."),
    ] = False,
    refresher: Annotated[
        bool,
        typer.Option(help="Run the background refresher here (or in `apiauth refresher`)."),
    ] = True,
) -> None:
    """Run the dashboard, the API and the refresher in one process."""
    from apiauth.server.run import run_server

    run_server(Settings(), host=host, port=port, demo=demo, refresher=refresher)


@app.command("refresher")
def refresher_command() -> None:
    """Run only the background refresher (for a separate worker process)."""
    import logging
    import signal

    from apiauth.domain.refresher import Refresher

    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    with broker_for_command() as broker:
        worker = Refresher(broker)
        worker.start()
        err.print("Refresher running; Ctrl-C stops it.")
        stopped = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
        try:
            stopped.wait()
        except KeyboardInterrupt:
            pass
        finally:
            worker.stop()


@users_app.command("create")
def users_create(
    email: str,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
    role: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="owner or member (default: owner for a team's first member)."),
    ] = None,
    team: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Team to join or create (default: the only team)."),
    ] = None,
) -> None:
    """Add a team member. The first member of an empty server owns a new team."""
    password: str | None = None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    with broker_for_command() as broker:
        member = members.create_member(broker, email, password, role=role, team_name=team)
    out.print(f"Created {member.role} [bold]{member.email}[/] in team {member.team_name}.")
    if password is None:
        out.print("No password was set: this member cannot sign in to the dashboard yet.")


@tokens_app.command("create")
def tokens_create(
    member: MemberOption = None,
    name: Annotated[str, typer.Option(help="What the token is for.")] = "cli",
) -> None:
    """Create a personal access token for the REST API (printed once)."""
    with broker_for_command() as broker:
        who = _acting_member(broker, member)
        token = members.create_personal_token(broker, who, name)
    err.print(f"Personal access token for {who.email} (shown once; keep it secret):")
    out.print(token, soft_wrap=True, highlight=False)


@sites_app.command("create")
def sites_create(
    name: str,
    deploy_hook: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--deploy-hook", help="URL to POST when the site's tokens change."),
    ] = None,
    webhook: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--webhook", help="URL to receive connection events."),
    ] = None,
    member: MemberOption = None,
) -> None:
    """Add a site."""
    with broker_for_command() as broker:
        view = sites.create_site(
            broker,
            _acting_member(broker, member),
            name,
            deploy_hook_url=deploy_hook,
            webhook_url=webhook,
        )
    out.print(f"Created site [bold]{view.name}[/]. Next: `apiauth sites enable {view.name}`.")
    if view.webhook_secret:
        err.print("Webhook signing secret (shown once; verify `Apiauth-Signature` with it):")
        out.print(view.webhook_secret, soft_wrap=True, highlight=False)


@sites_app.command("list")
def sites_list(member: MemberOption = None) -> None:
    """List the team's sites."""
    with broker_for_command() as broker:
        views = sites.list_sites(broker, _acting_member(broker, member))
    table = Table("site", "API auth", "connections", "needs attention", "deploy hook")
    for view in views:
        table.add_row(
            view.name,
            "on" if view.api_auth_enabled else "off",
            str(view.connection_count),
            str(view.needs_attention or ""),
            view.deploy_hook_url or "",
        )
    out.print(table if views else "No sites yet: `apiauth sites create NAME`.")


def _print_site_token(token: str) -> None:
    err.print("Set this in the site's build and function environment (shown once):")
    out.print(f"{sites.ENV_VAR}={token}", soft_wrap=True, highlight=False)


@sites_app.command("enable")
def sites_enable(name: str, member: MemberOption = None) -> None:
    """Enable API Authentication; prints APIAUTH_TOKEN once and fires the deploy hook."""
    with broker_for_command() as broker:
        token = sites.enable_api_auth(broker, _acting_member(broker, member), name)
    _print_site_token(token)


@sites_app.command("rotate-token")
def sites_rotate_token(name: str, member: MemberOption = None) -> None:
    """Issue a new site token; the old one stops working at once."""
    with broker_for_command() as broker:
        token = sites.rotate_site_token(broker, _acting_member(broker, member), name)
    _print_site_token(token)


@sites_app.command("disable")
def sites_disable(name: str, member: MemberOption = None) -> None:
    """Disable API Authentication and revoke the site's tokens."""
    with broker_for_command() as broker:
        sites.disable_api_auth(broker, _acting_member(broker, member), name)
    out.print(f"API Authentication is off for {name}; its tokens no longer work.")


@sites_app.command("delete")
def sites_delete(
    name: str,
    member: MemberOption = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a site with its connections and tokens."""
    if not yes:
        typer.confirm(f"Delete {name} and all its connections?", abort=True)
    with broker_for_command() as broker:
        sites.delete_site(broker, _acting_member(broker, member), name)
    out.print(f"Deleted {name}.")


@providers_app.command("list")
def providers_list() -> None:
    """List the providers sites can connect, and whether an OAuth app is configured."""
    with broker_for_command() as broker:
        table = Table("provider", "name", "default scopes", "OAuth app")
        for provider in broker.catalog.values():
            table.add_row(
                provider.name,
                provider.display_name,
                " ".join(provider.default_scopes),
                "configured" if provider.name in broker.default_apps else "not configured",
            )
    out.print(table)


@app.command()
def connect(
    site: str,
    provider: str,
    scope: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option("--scope", help="A scope to request (repeat; default: the provider's)."),
    ] = None,
    member: MemberOption = None,
    wait: Annotated[
        bool, typer.Option(help="Wait until the browser comes back from the provider.")
    ] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 600.0,
    param: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            "--param",
            help="A connection parameter as NAME=VALUE, e.g. shop=acme for Shopify (repeat).",
        ),
    ] = None,
) -> None:
    """Print the URL that connects SITE to PROVIDER, then wait until it is connected."""
    params: dict[str, str] = {}
    for pair in param or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--param")
        params[name.strip()] = value
    with broker_for_command() as broker:
        start = connections.start_connection(
            broker, _acting_member(broker, member), site, provider, scope, params=params
        )
        err.print(f"Open this URL in a browser to connect {site} to {provider}:")
        out.print(start.authorize_url, soft_wrap=True, highlight=False)
        if not wait:
            return
        with err.status("Waiting for the provider's consent…"):
            deadline = time.monotonic() + timeout
            while (outcome := connections.authorization_outcome(broker, start.state_id)) is None:
                if time.monotonic() > deadline:
                    outcome = "gave up waiting; run the command again"
                    break
                time.sleep(0.5)
        if outcome != CONNECTED:
            err.print(f"[red]Not connected:[/] {outcome}")
            raise typer.Exit(1)
        view = connections.get_connection(broker, _acting_member(broker, member), site, provider)
    who = view.account_login or view.account_id or "an account"
    out.print(f"{provider} connected as {who} (scopes: {' '.join(view.granted_scopes) or 'none'})")


@connections_app.command("list")
def connections_list(site: str, member: MemberOption = None) -> None:
    """List a site's connections and their state."""
    with broker_for_command() as broker:
        views = connections.list_connections(broker, _acting_member(broker, member), site)
    table = Table("provider", "status", "account", "granted scopes", "expires", "last error")
    for view in views:
        table.add_row(
            view.provider,
            view.status,
            view.account_login or view.account_id or "",
            " ".join(view.granted_scopes),
            _when(view.expires_at),
            view.last_error or "",
        )
    out.print(table if views else f"{site} has no connections: `apiauth connect {site} PROVIDER`.")


@connections_app.command("refresh")
def connections_refresh(site: str, provider: str, member: MemberOption = None) -> None:
    """Refresh a connection's token now, whatever its schedule says."""
    with broker_for_command() as broker:
        view = connections.refresh_site_connection(
            broker, _acting_member(broker, member), site, provider
        )
    if view.last_error:
        err.print(f"[red]Refresh failed:[/] {view.last_error}")
        raise typer.Exit(1)
    out.print(f"Refreshed {provider}; the token now expires {_when(view.expires_at)}.")


@connections_app.command("delete")
def connections_delete(site: str, provider: str, member: MemberOption = None) -> None:
    """Disconnect: revoke the token at the provider where it can, then delete it."""
    with broker_for_command() as broker:
        revoked = connections.delete_connection(
            broker, _acting_member(broker, member), site, provider
        )
    note = "revoked at the provider" if revoked else "the provider offers no revocation"
    out.print(f"Disconnected {provider} from {site} ({note}).")


@app.command()
def secrets(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the full answer, tokens included.")
    ] = False,
) -> None:
    """Show the tokens APIAUTH_TOKEN reads (masked unless --json), as a function sees them."""
    from apiauth.client import get_secrets

    found = get_secrets()
    if as_json:
        answer = {name: dataclasses.asdict(secret) for name, secret in found.items()}
        out.print_json(json.dumps(answer, default=str))
        return
    table = Table("provider", "logged in", "account", "granted scopes", "expires", "token")
    for name, secret in found.items():
        bearer = secret.bearer_token
        table.add_row(
            name,
            "yes" if secret.is_logged_in else "no",
            (secret.account.login or secret.account.id or "") if secret.account else "",
            " ".join(secret.granted_scopes),
            _when(secret.expires_at),
            f"{bearer[:4]}…" if bearer else "",
        )
    out.print(table if len(found) else "No provider is connected to this site yet.")


@app.command(
    options_metavar="[OPTIONS] --",
    # Everything from CMD on is CMD's own, options included (`-- python -c …`).
    context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True},
)
def run(
    command: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Argument(
            metavar="CMD [ARGS]",
            help="The command to run, after `--`, with its arguments.",
            show_default=False,
        ),
    ] = None,
    ttl: Annotated[
        int,
        typer.Option(
            "--ttl",
            metavar="SECONDS",
            help="Lifetime of the function token (1 to 86400 seconds).",
        ),
    ] = DEFAULT_FUNCTION_TOKEN_TTL,
    provider: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            "--provider",
            metavar="P",
            help="A provider the command may read (repeat; default: all of the site's).",
        ),
    ] = None,
) -> None:
    """Run a build command with a fresh function token in APIAUTH_TOKEN.

    Mints a short-lived function token from the site token in APIAUTH_TOKEN (at APIAUTH_URL),
    then runs CMD with it in place of the site token, so the command never holds the
    long-lived secret. CMD's exit status is passed through (127 when CMD is not found).

    Example: apiauth run --ttl 600 --provider github -- npm run build
    """
    from apiauth.client import NotConfigured, create_function_token

    if not command:
        err.print(
            "[red]error:[/] name the command to run after `--`, "
            "e.g. `apiauth run -- npm run build` (see `apiauth run --help`)",
            highlight=False,
        )
        raise typer.Exit(2)
    try:
        minted = create_function_token(ttl, provider)
    except NotConfigured:
        raise NotConfigured(
            "APIAUTH_TOKEN is not set: `apiauth run` mints a function token from the site "
            "token, so set APIAUTH_TOKEN to it (`apiauth sites enable SITE` prints one)."
        ) from None
    env = {**os.environ, sites.ENV_VAR: minted.token}
    raise typer.Exit(_run_child(command, env))


def _run_child(command: list[str], env: dict[str, str]) -> int:
    """Run CMD to its end with our stdin, stdout and stderr; its exit status, shell-style.

    Ctrl-C reaches the child from the terminal itself, so we keep waiting for it to finish;
    a SIGTERM sent to us alone (a CI runner cancelling) is passed on to it.
    """
    try:
        child = subprocess.Popen(command, env=env)  # noqa: S603 - the user's own command
    except FileNotFoundError:
        err.print(f"[red]error:[/] command not found: {command[0]}", highlight=False)
        return 127
    except PermissionError:
        err.print(f"[red]error:[/] permission denied: {command[0]}", highlight=False)
        return 126
    forward = signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
    try:
        while True:
            try:
                code = child.wait()
                break
            except KeyboardInterrupt:
                continue
    finally:
        signal.signal(signal.SIGTERM, forward)
    return 128 - code if code < 0 else code


@apps_app.command("list")
def apps_list(member: MemberOption = None) -> None:
    """List the OAuth app each provider uses: the team's own, or the server's."""
    with broker_for_command() as broker:
        views = oauth_apps.list_oauth_apps(broker, _acting_member(broker, member))
        redirect_uri = broker.settings.redirect_uri
    table = Table("provider", "client id", "from")
    for view in views:
        table.add_row(view.provider, view.client_id, view.source)
    out.print(table if views else "No OAuth app is configured yet.")
    out.print(f"Register this redirect URI with each provider: {redirect_uri}", highlight=False)


@apps_app.command("set")
def apps_set(
    provider: str,
    client_id: Annotated[str, typer.Option("--client-id", help="The app's client id.")],
    client_secret_stdin: Annotated[
        bool,
        typer.Option("--client-secret-stdin", help="Read the client secret from standard input."),
    ] = False,
    member: MemberOption = None,
) -> None:
    """Store the team's OAuth app for PROVIDER (the secret is encrypted, never shown again)."""
    secret = sys.stdin.readline().rstrip("\r\n") if client_secret_stdin else None
    with broker_for_command() as broker:
        view = oauth_apps.set_oauth_app(
            broker, _acting_member(broker, member), provider, client_id, secret
        )
    out.print(f"Saved the {view.provider} OAuth app {view.client_id}.")


@apps_app.command("remove")
def apps_remove(provider: str, member: MemberOption = None) -> None:
    """Forget the team's own OAuth app for PROVIDER (the server's, if any, applies again)."""
    with broker_for_command() as broker:
        oauth_apps.remove_oauth_app(broker, _acting_member(broker, member), provider)
    out.print(f"Removed the team's {provider} OAuth app.")


@keys_app.command("generate")
def keys_generate() -> None:
    """Print a new master key (for APIAUTH_MASTER_KEY; put it first to rotate)."""
    from apiauth.vault import MasterKey

    out.print(MasterKey.generate().to_text(), highlight=False)


@keys_app.command("rotate")
def keys_rotate() -> None:
    """Re-wrap every record under a new master key; old keys stay readable until done."""
    from apiauth.vault import KeyFile

    settings = Settings()
    key_file = None if settings.master_key else KeyFile(settings.key_file)
    if key_file is not None:
        ring = key_file.load_or_create()
        if len(ring.keys) == 1:
            new_key = key_file.add_new_key()
            err.print(f"Added master key {new_key.id} to {key_file.path}.")
        else:
            err.print(f"Finishing an interrupted rotation to key {ring.active.id}.")
    with broker_for_command() as broker:
        active = broker.vault.keyring.active.id
        total = key_rotation.count_encrypted_records(broker)
        with Progress(console=err) as progress:
            task = progress.add_task("Re-wrapping records", total=total)
            result = key_rotation.rewrap_all(broker, lambda n: progress.advance(task, n))
        left = {k: n for k, n in key_rotation.records_by_key(broker).items() if k != active}
    if left:
        err.print(f"[red]Records still under old keys:[/] {left}; run the command again.")
        raise typer.Exit(1)
    if key_file is not None:
        key_file.keep_only(active)
        out.print(f"Rotated {result.rewrapped} records to key {active}; old keys removed.")
    elif result.rewrapped == 0:
        out.print(
            f"Every record is under key {active} already. To rotate, put a new key "
            "(`apiauth keys generate`) first in APIAUTH_MASTER_KEY and run this again."
        )
    else:
        out.print(
            f"Rotated {result.rewrapped} records to key {active}. The older keys in "
            "APIAUTH_MASTER_KEY can now be removed."
        )


@app.command()
def events(
    site: str,
    limit: Annotated[
        int, typer.Option(min=1, max=audit.MAX_PAGE, help="How many events, newest first.")
    ] = audit.DEFAULT_PAGE,
    before: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="Only events older than this event id (the next page)."),
    ] = None,
    member: MemberOption = None,
) -> None:
    """Show a site's audit log: changes, and every read of its secrets (never a token)."""
    with broker_for_command() as broker:
        page = audit.list_events(broker, _acting_member(broker, member), site, limit, before)
    table = Table("id", "when", "event", "actor", "ip", "detail")
    for event in page.events:
        table.add_row(
            str(event.id),
            event.created_at.isoformat(timespec="seconds"),
            event.kind,
            event.actor,
            event.ip or "",
            # Text, not markup: a JSON list looks like a Rich style tag.
            Text(json.dumps(event.detail, separators=(", ", ": "), default=str)),
        )
    out.print(table if page.events else f"{site} has no events yet.")
    if page.next_before is not None:
        err.print(f"Older events: `apiauth events {site} --before {page.next_before}`.")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the database to the newest schema."""
    settings = Settings()
    with broker_for_command():
        pass
    out.print(f"Database is up to date ({settings.resolved_database_url.split('@')[-1]}).")


@app.command()
def backup(
    file: Annotated[Path, typer.Argument(help="Where to write the backup (mode 0600).")],
) -> None:
    """Write every table to FILE, encrypted with the master key (restore with `apiauth restore`)."""
    from apiauth.domain import backup as backups

    with broker_for_command() as broker:
        total = backups.count_rows(broker)
        with Progress(console=err, transient=True) as progress:
            task = progress.add_task("Backing up rows", total=total)
            summary = backups.write_backup(broker, file, lambda n: progress.advance(task, n))
    out.print(
        f"Wrote {summary.total} rows to {file}, encrypted with master key {summary.key_id}: "
        "keep that key, the backup does not open without it.",
        highlight=False,
    )


@app.command()
def restore(
    file: Annotated[Path, typer.Argument(help="A file written by `apiauth backup`.")],
) -> None:
    """Restore a backup into an empty database; needs the master key that made it."""
    from apiauth.domain import backup as backups

    with broker_for_command() as broker:
        opened = backups.open_backup(broker, file)
        with Progress(console=err, transient=True) as progress:
            task = progress.add_task("Restoring rows", total=opened.total)
            rows = backups.restore_backup(broker, opened, lambda n: progress.advance(task, n))
    out.print(f"Restored {sum(rows.values())} rows from {file}.", highlight=False)
