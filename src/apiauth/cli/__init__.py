"""The `apiauth` command. Errors from any layer become one readable line and exit status 1
here, and nowhere else."""

from __future__ import annotations

import sys

from rich.console import Console


def main() -> None:
    from apiauth.cli.commands import app
    from apiauth.client import ApiAuthError
    from apiauth.errors import ApiAuthServerError
    from apiauth.providers import CatalogError
    from apiauth.vault import VaultError

    try:
        app()
    except (ApiAuthServerError, ApiAuthError, CatalogError, VaultError) as exc:
        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
