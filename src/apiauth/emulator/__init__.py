"""A provider emulator: every catalog provider's OAuth endpoints over real HTTP, offline.

`serve --demo` mounts it at `/_emulator`; tests run it on a free port. It behaves like the
real providers, quirks included, so apiauth's real code paths run against it. Beside them it
plays standards-compliant authorization servers and an MCP-style protected resource
(`standard_server`), for providers added by URL.
"""

from apiauth.emulator.app import create_emulator_app
from apiauth.emulator.standard_server import StandardServers, well_known_app
from apiauth.emulator.state import STAT_NAMES, EmulatorState, Fault

__all__ = [
    "STAT_NAMES",
    "EmulatorState",
    "Fault",
    "StandardServers",
    "create_emulator_app",
    "well_known_app",
]
