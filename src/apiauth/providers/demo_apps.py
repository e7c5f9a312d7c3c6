"""The OAuth apps of demo mode: the client id and secret each emulated provider accepts.

A fact both sides of demo mode share - the broker registers these apps for emulated
providers (`serve --demo`, and the CLI beside it), the emulator accepts them - so it lives
with the catalog, below both, rather than in the emulator, which only the app factory may
import (the emulator is reached over HTTP, like a real provider).
"""

from __future__ import annotations

__all__ = ["demo_client"]


def demo_client(provider: str) -> tuple[str, str]:
    """The (client id, client secret) of the demo OAuth app for `provider`."""
    return f"demo-{provider}-client", f"demo-{provider}-secret"
