"""A provider emulator: every catalog provider's OAuth endpoints over real HTTP, offline.

`serve --demo` mounts it at `/_emulator`; tests run it on a free port. It behaves like the
real providers, quirks included, so apiauth's real code paths run against it.
"""

from apiauth.emulator.app import create_emulator_app, demo_client
from apiauth.emulator.state import STAT_NAMES, EmulatorState, Fault

__all__ = ["STAT_NAMES", "EmulatorState", "Fault", "create_emulator_app", "demo_client"]
