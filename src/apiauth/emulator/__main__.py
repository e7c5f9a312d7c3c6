"""Run the emulator on its own: `python -m apiauth.emulator [--port 8001] [--token-ttl 60]`.

It accepts the demo OAuth apps (`demo_client()`), as `apiauth serve --demo` does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn

from apiauth.emulator.app import create_emulator_app
from apiauth.providers import demo_client, load_catalog


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m apiauth.emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--providers-file", type=Path, help="TOML file of custom providers")
    parser.add_argument("--token-ttl", type=int, help="lifetime of expiring access tokens (s)")
    args = parser.parse_args()
    base_url = f"http://{args.host}:{args.port}"
    catalog = load_catalog(args.providers_file, emulator_url=base_url)
    clients = {name: demo_client(name) for name in catalog}
    app = create_emulator_app(catalog, base_url=base_url, clients=clients, token_ttl=args.token_ttl)
    for provider in catalog.values():
        print(f"{provider.display_name}: {provider.authorization_url}")
    uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
