"""The function-side commands, `apiauth run` and `apiauth secrets`, with only what
`pip install apiauth` installs: the standard library (argparse), httpx and `apiauth.client`.

Builds run these (`apiauth run -- npm run build` is the dashboard's build snippet), often in
an image that has only the client. The operator commands (users, sites, connect, serve, ...)
need the server's dependencies; without them, `apiauth` says so in one line. An
import-linter contract (`client-cli-alone`) keeps this module to these imports.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import IO, Any

from apiauth.client import (
    DEFAULT_FUNCTION_TOKEN_TTL,
    ApiAuthError,
    NotConfigured,
    Secrets,
    __version__,
    create_function_token,
    get_secrets,
)

COMMANDS = ("run", "secrets")
"""What this module runs, with or without the server installed."""

ENV_VAR = "APIAUTH_TOKEN"
SERVER_INSTALL = "pip install 'apiauth[server]'"


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse's help with Typer's capitalised `Usage:`, which the docs show."""

    def add_usage(
        self, usage: str | None, actions: Any, groups: Any, prefix: str | None = None
    ) -> None:
        super().add_usage(usage, actions, groups, prefix="Usage: " if prefix is None else prefix)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apiauth",
        formatter_class=_Formatter,
        description="Fresh provider tokens for builds and functions, from an apiauth broker "
        "(APIAUTH_TOKEN, APIAUTH_URL).",
        epilog="The operator commands (serve, users, sites, connect, ...) need the server: "
        f"{SERVER_INSTALL}.",
    )
    parser.add_argument("--version", action="version", version=f"apiauth {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    secrets = commands.add_parser(
        "secrets",
        formatter_class=_Formatter,
        help="Show the tokens APIAUTH_TOKEN reads (masked unless --json).",
        description="Show the tokens APIAUTH_TOKEN reads (masked unless --json), as a "
        "function sees them.",
    )
    secrets.add_argument(
        "--json",
        dest="as_json",
        action="store_true",
        help="Print the full answer, tokens included.",
    )
    run = commands.add_parser(
        "run",
        formatter_class=_Formatter,
        usage="apiauth run [OPTIONS] -- CMD [ARGS]...",
        help="Run a build command with a fresh function token in APIAUTH_TOKEN.",
        description="Run a build command with a fresh function token in APIAUTH_TOKEN.\n\n"
        "Mints a short-lived function token from the site token in APIAUTH_TOKEN (at "
        "APIAUTH_URL),\nthen runs CMD with it in place of the site token, so the command never "
        "holds the\nlong-lived secret. CMD's exit status is passed through (127 when CMD is not "
        "found).\n\nExample: apiauth run --ttl 600 --provider github -- npm run build",
    )
    run.add_argument(
        "--ttl",
        type=int,
        default=DEFAULT_FUNCTION_TOKEN_TTL,
        metavar="SECONDS",
        help="Lifetime of the function token (1 to 86400 seconds; default %(default)s).",
    )
    run.add_argument(
        "--provider",
        action="append",
        metavar="P",
        help="A provider the command may read (repeat; default: all of the site's).",
    )
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD [ARGS]", help=argparse.SUPPRESS)
    return parser


def handles(args: Sequence[str]) -> bool:
    """Whether this module answers these arguments, server installed or not."""
    first = next((arg for arg in args if not arg.startswith("-")), None)
    return first in COMMANDS or (first is None and "--version" in args)


def main(args: Sequence[str]) -> int:
    """Run a client command; its exit status. An `ApiAuthError` is one `error:` line."""
    parsed = _parser().parse_args(list(args))
    try:
        if parsed.command == "secrets":
            return print_secrets(parsed.as_json)
        if parsed.command == "run":
            command = list(parsed.cmd)
            if command[:1] == ["--"]:
                command = command[1:]
            return run_command(command, parsed.ttl, parsed.provider)
    except ApiAuthError as exc:
        _error(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
    _parser().print_help()
    return 2


def without_server(args: Sequence[str], missing: ModuleNotFoundError) -> int:
    """`apiauth` for anything but the client commands, on a client-only install."""
    first = next((arg for arg in args if not arg.startswith("-")), None)
    if first is None:
        _parser().print_help(sys.stdout if {"-h", "--help"} & set(args) else sys.stderr)
        return 0 if {"-h", "--help"} & set(args) else 2
    _error(
        f"`apiauth {first}` is an operator command and needs the server ({missing.name} is "
        f"not installed): {SERVER_INSTALL}"
    )
    return 1


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


# --------------------------------------------------------------------------- secrets


def _when(value: datetime | None) -> str:
    return "never" if value is None else str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], out: IO[str]) -> None:
    """A box-drawn table, the shape the Rich tables of the operator commands have."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=False)]

    def line(left: str, fill: str, middle: str, right: str) -> str:
        return left + middle.join(fill * (width + 2) for width in widths) + right

    def cells(values: Sequence[str], bar: str) -> str:
        padded = (f" {value:<{width}} " for value, width in zip(values, widths, strict=True))
        return bar + bar.join(padded) + bar

    print(line("┏", "━", "┳", "┓"), file=out)
    print(cells(headers, "┃"), file=out)
    print(line("┡", "━", "╇", "┩"), file=out)
    for row in rows:
        print(cells(row, "│"), file=out)
    print(line("└", "─", "┴", "┘"), file=out)


def _masked(value: str | None) -> str:
    return f"{value[:4]}…" if value else ""


def print_secrets(as_json: bool, out: IO[str] | None = None) -> int:
    """Print what `get_secrets()` reads: masked, or the full answer as JSON."""
    out = out or sys.stdout
    found: Secrets = get_secrets()
    if as_json:
        answer: dict[str, Any] = {
            name: dataclasses.asdict(secret) for name, secret in found.items()
        }
        print(json.dumps(answer, indent=2, default=str), file=out)
        return 0
    if not len(found):
        print("No provider is connected to this site yet.", file=out)
        return 0
    rows = [
        [
            name,
            "yes" if secret.is_logged_in else "no",
            (secret.account.login or secret.account.id or "") if secret.account else "",
            " ".join(secret.granted_scopes),
            _when(secret.expires_at),
            _masked(secret.bearer_token or secret.api_key or secret.password),
        ]
        for name, secret in found.items()
    ]
    headers = ["provider", "logged in", "account", "granted scopes", "expires", "token"]
    _table(headers, rows, out)
    return 0


# --------------------------------------------------------------------------- run


def run_command(command: list[str], ttl: int, providers: Sequence[str] | None) -> int:
    """Mint a function token from the site token, run CMD with it; CMD's exit status."""
    if not command:
        _error(
            "name the command to run after `--`, e.g. `apiauth run -- npm run build` "
            "(see `apiauth run --help`)"
        )
        return 2
    try:
        minted = create_function_token(ttl, providers)
    except NotConfigured:
        raise NotConfigured(
            "APIAUTH_TOKEN is not set: `apiauth run` mints a function token from the site "
            "token, so set APIAUTH_TOKEN to it (`apiauth sites enable SITE` prints one)."
        ) from None
    return _run_child(command, {**os.environ, ENV_VAR: minted.token})


def _run_child(command: list[str], env: dict[str, str]) -> int:
    """Run CMD to its end with our stdin, stdout and stderr; its exit status, shell-style.

    Ctrl-C reaches the child from the terminal itself, so we keep waiting for it to finish;
    a SIGTERM sent to us alone (a CI runner cancelling) is passed on to it.
    """
    try:
        child = subprocess.Popen(command, env=env)  # noqa: S603 - the user's own command
    except FileNotFoundError:
        _error(f"command not found: {command[0]}")
        return 127
    except PermissionError:
        _error(f"permission denied: {command[0]}")
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
