"""`apiauth …`: thin commands that parse, call a domain service and print.

Operator commands (users, tokens, sites, connect, keys, db) work on the database directly,
like `manage.py`, so they work on a fresh data dir before any server runs. `secrets` (and
`run`) are what builds use: they go through the HTTP API with APIAUTH_TOKEN, like functions.
"""

from __future__ import annotations

import json
import sys
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

from apiauth.cli import client as client_commands
from apiauth.client import DEFAULT_FUNCTION_TOKEN_TTL
from apiauth.config import Settings
from apiauth.domain import (
    audit,
    connect_flow,
    connections,
    key_rotation,
    machine_connections,
    members,
    oauth_apps,
    pasted_credentials,
    provider_rechecks,
    sites,
    team_providers,
)
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
providers_app = typer.Typer(
    help="The provider catalog, and providers added by URL.", no_args_is_help=True
)
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
    workers: Annotated[
        int,
        typer.Option(
            help="Server processes sharing the port (PostgreSQL only; each is a replica).",
            min=1,
        ),
    ] = 1,
) -> None:
    """Run the dashboard, the API and the refresher (in one process, or --workers N)."""
    from apiauth.server.run import run_server

    settings = Settings().listening_on(host, port)
    run_server(settings, host=host, port=port, demo=demo, refresher=refresher, workers=workers)


@app.command("refresher")
def refresher_command() -> None:
    """Run only the background refresher (for a separate worker process), with the
    re-checks of providers added by URL.

    Its metrics are served on APIAUTH_METRICS_PORT when that is set (it has no other port).
    """
    from apiauth.server.run import run_refresher

    run_refresher(Settings(), announce=lambda: err.print("Refresher running; Ctrl-C stops it."))


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
    """Enable API Authentication; prints APIAUTH_TOKEN once and fires the deploy hook.

    On a site that is enabled already, changes nothing (its token keeps working) and says so.
    """
    with broker_for_command() as broker:
        token = sites.enable_api_auth_once(broker, _acting_member(broker, member), name)
    if token is None:
        err.print(
            f"API Authentication is already enabled for {name}; its {sites.ENV_VAR} is "
            f"unchanged. For a new one (the current one stops working): "
            f"`apiauth sites rotate-token {name}`.",
            highlight=False,
        )
        return
    _print_site_token(token)


@sites_app.command("rotate-token")
def sites_rotate_token(
    name: str,
    member: MemberOption = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Issue a new site token; the old one, and every function token minted from it, stop
    working at once."""
    if not yes:
        if not sys.stdin.isatty():
            raise typer.BadParameter(
                "rotating stops the current token at once: add --yes to confirm", param_hint="--yes"
            )
        typer.confirm(
            f"Issue a new {sites.ENV_VAR} for {name}? The current one stops working at once.",
            abort=True,
        )
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
def providers_list(member: MemberOption = None) -> None:
    """List the providers sites can connect (the catalog and the team's providers added by
    URL), and whether a client is configured for each."""
    with broker_for_command() as broker:
        configured: set[str] = set()
        added: list[team_providers.TeamProviderView] = []
        # Before the first member exists (a fresh install) there is no team: list the catalog.
        if member is not None or members.member_count(broker):
            acting = _acting_member(broker, member)
            configured = {app.provider for app in oauth_apps.list_oauth_apps(broker, acting)}
            added = team_providers.list_team_providers(broker, acting)
        table = Table("provider", "name", "default scopes", "OAuth app")
        for provider in broker.catalog.values():
            table.add_row(
                provider.name,
                provider.display_name,
                " ".join(provider.default_scopes),
                "configured" if provider.name in configured else "not configured",
            )
        for view in added:
            state: str = "needs a client" if view.needs_client else view.client_kind
            if view.refused_change:
                state += " (a metadata change was refused)"
            table.add_row(
                view.name,
                f"{view.display_name} (added by URL)",
                " ".join(s.name for s in view.scopes if s.default),
                "team app" if view.has_own_app else state,
            )
    out.print(table)


@providers_app.command("add")
def providers_add(
    url: Annotated[str, typer.Argument(help="An OAuth issuer, or an API / MCP server URL.")],
    name: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--name", help="The provider's name (default: from the URL's host)."),
    ] = None,
    scope: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option("--scope", help="A scope to tick by default (repeat; default: asked)."),
    ] = None,
    client_id: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--client-id", help="A client registered by hand (wins over registering)."),
    ] = None,
    client_secret_stdin: Annotated[
        bool, typer.Option("--client-secret-stdin", help="Read its secret from standard input.")
    ] = False,
    allow_without_pkce: Annotated[
        bool,
        typer.Option("--allow-without-pkce", help="Accept a server that does not list PKCE S256."),
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask; take the suggestions.")] = False,
    member: MemberOption = None,
) -> None:
    """Add a provider from one URL: apiauth finds the authorization server (RFC 8414,
    OpenID Connect discovery, or RFC 9728 for a protected resource such as an MCP server),
    shows what it found, and registers itself as a client where the server allows it."""
    secret = sys.stdin.readline().rstrip("\r\n") if client_secret_stdin else None
    with broker_for_command() as broker:
        acting = _acting_member(broker, member)
        with err.status(f"Looking for an OAuth server at {url}…"):
            found = team_providers.find_provider(
                broker, acting, url, name=name, allow_without_pkce=allow_without_pkce
            )
        _show_found(found)
        if scope is None and not yes and sys.stdin.isatty() and not client_secret_stdin:
            suggested = " ".join(s.name for s in found.scopes if s.default)
            answer = typer.prompt("Scopes to tick by default (space-separated)", default=suggested)
            scope = answer.split()
        added = team_providers.add_found_provider(
            broker,
            acting,
            found,
            scopes=scope,
            client_id=client_id,
            client_secret=secret,
            allow_without_pkce=allow_without_pkce,
        )
    out.print(added.message, highlight=False)
    out.print(f"Connect a site with: apiauth connect SITE {added.view.name}", highlight=False)


def _show_found(found: team_providers.FoundProvider) -> None:
    server = found.discovered.server
    kind = "OpenID Connect provider" if server.openid else "OAuth 2.0 authorization server"
    err.print(f"Found the {kind} {server.issuer}", highlight=False)
    if found.resource:
        err.print(f"  protecting the resource {found.resource}", highlight=False)
    err.print(f"  metadata: {server.metadata_url}", highlight=False)
    plans = {
        team_providers.METADATA_DOCUMENT: "a Client ID Metadata Document (nothing to register)",
        team_providers.REGISTERED: "dynamic client registration (RFC 7591)",
        team_providers.NO_CLIENT: "none offered: a client must be registered by hand",
    }
    err.print(f"  client: {plans[found.client_plan]}", highlight=False)
    if server.iss_parameter_supported:
        err.print("  names itself in its answers (iss, RFC 9207): checked", highlight=False)
    if found.scopes:
        err.print("  scopes:", highlight=False)
        for s in found.scopes:
            tick = "[x]" if s.default else "[ ]"
            err.print(
                f"    {tick} {s.name}  {s.description}".rstrip(), highlight=False, markup=False
            )


@providers_app.command("remove")
def providers_remove(
    name: str,
    keep_registration: Annotated[
        bool,
        typer.Option("--keep-registration", help="Keep apiauth's client registration there."),
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    member: MemberOption = None,
) -> None:
    """Remove a provider added by URL (and apiauth's registration at its server)."""
    if not yes:
        typer.confirm(f"Remove the provider {name}?", abort=True)
    with broker_for_command() as broker:
        removed = team_providers.remove_provider(
            broker, _acting_member(broker, member), name, keep_registration=keep_registration
        )
    note = (
        " and deleted apiauth's client registration there" if removed.registration_deleted else ""
    )
    out.print(f"Removed {name}{note}.")


@providers_app.command("check")
def providers_check(name: str, member: MemberOption = None) -> None:
    """Fetch a provider's metadata again now (the server does it on a schedule too)."""
    with broker_for_command() as broker:
        problem = provider_rechecks.recheck_named_provider(
            broker, _acting_member(broker, member), name
        )
    if problem:
        err.print(f"[yellow]{name}:[/] {problem}", highlight=False)
        raise typer.Exit(1)
    out.print(f"{name}: the metadata was fetched again and is in use.")


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
    api_key_stdin: Annotated[
        bool,
        typer.Option(
            "--api-key-stdin", help="Read the API key of a key-based provider from stdin."
        ),
    ] = False,
    username: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--username", help="The username of a basic-auth provider (Twilio's SID)."),
    ] = None,
    password_stdin: Annotated[
        bool,
        typer.Option("--password-stdin", help="Read the basic-auth password from stdin."),
    ] = False,
) -> None:
    """Print the URL that connects SITE to PROVIDER, then wait until it is connected. A
    key-based provider takes its key (--api-key-stdin) or username and password (--username,
    --password-stdin) instead: verified at the provider, then stored."""
    params: dict[str, str] = {}
    for pair in param or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--param")
        params[name.strip()] = value
    if api_key_stdin or username is not None or password_stdin:
        credentials = _pasted_credentials(api_key_stdin, username, password_stdin)
        with broker_for_command() as broker:
            view = pasted_credentials.connect_with_credentials(
                broker, _acting_member(broker, member), site, provider, credentials, params
            )
        who = view.account_login or view.account_id or "an account"
        out.print(f"{provider} connected as {who} ({view.auth_mode}, verified at the provider)")
        return
    with broker_for_command() as broker:
        acting = _acting_member(broker, member)
        if machine_connections.needs_no_consent(broker, acting, provider):
            view = machine_connections.connect_client(broker, acting, site, provider, scope, params)
            out.print(f"{provider} connected ({view.auth_mode}: a token was minted for {site})")
            return
        start = connect_flow.start_connection(
            broker, _acting_member(broker, member), site, provider, scope, params=params
        )
        err.print(f"Open this URL in a browser to connect {site} to {provider}:")
        out.print(start.authorize_url, soft_wrap=True, highlight=False)
        if not wait:
            return
        with err.status("Waiting for the provider's consent…"):
            deadline = time.monotonic() + timeout
            while (outcome := connect_flow.authorization_outcome(broker, start.state_id)) is None:
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


def _pasted_credentials(
    api_key_stdin: bool, username: str | None, password_stdin: bool
) -> dict[str, str]:
    """The `credentials` of a key-based connection, the secret half read from stdin (never
    from the command line, where `ps` and shell history would show it)."""
    if api_key_stdin and (username is not None or password_stdin):
        raise typer.BadParameter(
            "give either --api-key-stdin or --username with --password-stdin",
            param_hint="--api-key-stdin",
        )
    if not api_key_stdin and (username is None or not password_stdin):
        raise typer.BadParameter(
            "basic credentials need both --username and --password-stdin",
            param_hint="--username",
        )
    secret = sys.stdin.readline().rstrip("\r\n")
    if not secret:
        raise typer.BadParameter("nothing was read from stdin", param_hint="stdin")
    if api_key_stdin:
        return {"api_key": secret}
    assert username is not None
    return {"username": username, "password": secret}


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
    # `apiauth secrets` itself runs apiauth.cli.client (no server needed); this keeps it listed.
    raise typer.Exit(client_commands.print_secrets(as_json))


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
    # `apiauth run` itself runs apiauth.cli.client (no server needed); this keeps it listed.
    raise typer.Exit(client_commands.run_command(command or [], ttl, provider))


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
    client_id: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--client-id",
            help="The app's client id (a service account key file brings its own).",
        ),
    ] = None,
    client_secret_stdin: Annotated[
        bool,
        typer.Option("--client-secret-stdin", help="Read the client secret from standard input."),
    ] = False,
    private_key_file: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--private-key-file",
            help="A PEM private key instead of a secret (token_auth_method private_key_jwt, "
            "a service account's JSON key file, a GitHub App's key).",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ] = None,
    app_id: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--app-id", help="A GitHub App's id (instead of --client-id)."),
    ] = None,
    slug: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--slug", help="A GitHub App's slug, as in https://github.com/apps/SLUG."),
    ] = None,
    member: MemberOption = None,
) -> None:
    """Store the team's OAuth app for PROVIDER (the secret is encrypted, never shown again).

    A GitHub App: apiauth apps set github-app --app-id ID --slug SLUG --private-key-file key.pem
    """
    if client_secret_stdin and private_key_file is not None:
        raise typer.BadParameter(
            "give either --client-secret-stdin or --private-key-file",
            param_hint="--private-key-file",
        )
    if app_id is not None and client_id is not None:
        raise typer.BadParameter("give either --client-id or --app-id", param_hint="--app-id")
    client_id = client_id or app_id
    secret = sys.stdin.readline().rstrip("\r\n") if client_secret_stdin else None
    if private_key_file is not None:
        secret, named = _private_key_from_file(private_key_file)
        client_id = client_id or named
    if not client_id:
        raise typer.BadParameter(
            "the app's client id (a GitHub App's --app-id) is needed", param_hint="--client-id"
        )
    with broker_for_command() as broker:
        view = oauth_apps.set_oauth_app(
            broker, _acting_member(broker, member), provider, client_id, secret, slug
        )
    named_slug = f" ({view.app_slug})" if view.app_slug else ""
    out.print(f"Saved the {view.provider} OAuth app {view.client_id}{named_slug}.")


def _private_key_from_file(path: Path) -> tuple[str, str | None]:
    """(PEM private key, client id) of a PEM file, or of a service account's JSON key file
    (Google's: `private_key` and `client_email`)."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        raise typer.BadParameter(
            "cannot read the key file as text (a PEM or JSON key file)",
            param_hint="--private-key-file",
        ) from None
    if not text.startswith("{"):
        return text + "\n", None
    try:
        document = json.loads(text)
        return str(document["private_key"]), str(document["client_email"])
    except (ValueError, KeyError, TypeError):
        raise typer.BadParameter(
            "a JSON key file needs private_key and client_email", param_hint="--private-key-file"
        ) from None


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
    """Re-wrap every record under a new master key, or under APIAUTH_KMS's key; old keys
    stay readable until done, and an interrupted rotation finishes when run again.

    With the key file: adds a new key, re-wraps, removes the old key. With
    APIAUTH_MASTER_KEY: put a new key first, run this, then remove the old key. With
    APIAUTH_KMS (or after removing it): set it the same way on every server first; this
    moves every record under the configured key (local -> KMS, KMS -> local, or between
    KMS keys).
    """
    from apiauth.vault import KeyFile

    settings = Settings()
    key_file = None if settings.master_key or settings.kms else KeyFile(settings.key_file)
    if key_file is not None:
        ring = key_file.load_or_create()
        if len(ring.keys) == 1:
            new_key = key_file.add_new_key()
            err.print(f"Added master key {new_key.id} to {key_file.path}.")
        else:
            err.print(f"Finishing an interrupted rotation to key {ring.active.id}.")
    with broker_for_command() as broker:
        active = broker.vault.active_key_id
        where = key_rotation.key_location(broker, active)
        total = key_rotation.count_encrypted_records(broker)
        with Progress(console=err) as progress:
            task = progress.add_task(f"Re-wrapping records under key {active}", total=total)
            result = key_rotation.rewrap_all(broker, lambda n: progress.advance(task, n))
        left = {k: n for k, n in key_rotation.records_by_key(broker).items() if k != active}
    if left:
        err.print(
            f"[red]Records still under other keys:[/] {left}; a server still seals with one "
            "of them: give every server the same key settings, then run the command again."
        )
        raise typer.Exit(1)
    if key_file is not None:
        key_file.keep_only(active)
        out.print(f"Rotated {result.rewrapped} records to key {active}; old keys removed.")
    elif settings.kms:
        out.print(f"{result.rewrapped} records moved to key {active} ({where}).")
        if settings.master_key is None and settings.key_file.exists():
            err.print(
                f"No record needs the local key file {settings.key_file} any more: keep it "
                "only while you keep backups made with it, then delete it."
            )
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


_DOCTOR_MARKS = {
    "ok": "[green]✓[/]",
    "warn": "[yellow]![/]",
    "fail": "[red]✗[/]",
    "skip": "[dim]-[/]",
}


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
) -> None:
    """Check this deployment and say what is wrong and how to fix it.

    Looks at the database and its schema, the master key (and KMS), the public URL, the
    OAuth apps of the providers in use, the clock, trusted proxies, file permissions and
    the replicas seen recently, with the settings of this shell. Changes nothing. Exit
    status 0 when nothing failed (warnings allowed), 1 otherwise.
    """
    from apiauth.domain.doctor import run_doctor

    report = run_doctor(Settings())
    if as_json:
        out.print_json(json.dumps(report.as_json()))
    else:
        width = max(len(check.name) for check in report.checks)
        for check in report.checks:
            line = Text.from_markup(f"{_DOCTOR_MARKS[check.status]} ")
            line.append(f"{check.name:<{width}}  ", style="bold")
            line.append(check.message)
            out.print(line)
            if check.fix:
                out.print(Text(f"{'':{width + 4}}fix: {check.fix}", style="cyan"))
        summary = f"{report.problems} problem(s), {report.warnings} warning(s)."
        out.print(Text(summary, style="red" if report.problems else "green"))
    if not report.ok:
        raise typer.Exit(1)


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
