"""The `apiauth` command. Errors from any layer become one readable line and exit status 1
here, and nowhere else.

`run` and `secrets` (what builds and functions use) work from `pip install apiauth` alone:
they are `apiauth.cli.client`, standard library and httpx. Everything else is the Typer app
of `apiauth.cli.commands`, imported only when asked for, which needs the server extra; without
it, `apiauth` says so in one line instead of a traceback.
"""

from __future__ import annotations

import sys


def main() -> None:
    from apiauth.cli import client

    args = sys.argv[1:]
    if client.handles(args):
        sys.exit(client.main(args))
    try:
        from rich.console import Console

        from apiauth.cli.commands import app
        from apiauth.errors import ApiAuthServerError
        from apiauth.providers import CatalogError
        from apiauth.vault import VaultError
    except ModuleNotFoundError as exc:
        sys.exit(client.without_server(args, exc))
    from apiauth.client import ApiAuthError

    try:
        app()
    except (ApiAuthServerError, ApiAuthError, CatalogError, VaultError) as exc:
        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
