"""`apiauth run` and `apiauth secrets` from the client install (`pip install apiauth`, httpx
alone), and a one-line answer from the operator commands there.

Two ways: a child Python in which every server dependency fails to import (fast, runs
everywhere), and, in CI, a fresh virtualenv with only `pip install <repo>`.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from tests.databases import IN_CI, fresh_sqlite_database
from tests.live_site import Site
from tests.processes import client_env
from tests.servers import LiveServer, running_server

ROOT = Path(__file__).resolve().parents[1]
# The server extra's import names (pyproject's `server`) and what they bring along.
SERVER_MODULES = (
    "rich",
    "typer",
    "click",
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "alembic",
    "authlib",
    "cryptography",
    "argon2",
    "jinja2",
    "pydantic",
    "pydantic_settings",
    "psycopg",
    "boto3",
)
WITHOUT_SERVER = f"""
import importlib.abc, sys

class WithoutServer(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {SERVER_MODULES!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, WithoutServer())
sys.argv[0] = "apiauth"
from apiauth.cli import main
main()
"""
CHILD = "import os; print('child got', os.environ['APIAUTH_TOKEN'][:11])"
SERVER_EXTRA = "pip install 'apiauth[server]'"


def without_server(
    args: Sequence[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`apiauth ARGS...` where no server dependency can be imported."""
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_SERVER, *args],
        env=env if env is not None else client_env("http://127.0.0.1:9", ""),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[LiveServer, str]]:
    """A live server (SQLite: not a storage test) with my-site's GitHub connected."""
    with (
        running_server(tmp_path, fresh_sqlite_database(tmp_path)) as server,
        httpx.Client(timeout=15) as http,
    ):
        built = Site(server, http)
        built.connect("github")
        yield server, built.token


@pytest.mark.over_http
def test_run_and_secrets_work_without_any_server_dependency(
    site: tuple[LiveServer, str],
) -> None:
    server, token = site
    env = client_env(server.url, token)
    ran = without_server(["run", "--ttl", "60", "--", sys.executable, "-c", CHILD], env)
    assert ran.returncode == 0, ran.stderr
    assert "child got apiauth_fn_" in ran.stdout
    assert token not in ran.stdout + ran.stderr

    listed = without_server(["secrets"], env)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith("│ github"))
    assert [cell.strip() for cell in row.strip("│").split("│")][:2] == ["github", "yes"]

    full = without_server(["secrets", "--json"], env)
    assert full.returncode == 0, full.stderr
    assert '"provider": "github"' in full.stdout


def test_client_commands_explain_a_missing_token_in_one_line() -> None:
    for args in (["secrets"], ["run", "--", "true"]):
        done = without_server(args)
        assert done.returncode == 1
        assert done.stderr.startswith("error: APIAUTH_TOKEN is not set"), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        assert "Traceback" not in done.stderr


def test_operator_commands_say_in_one_line_that_they_need_the_server_extra() -> None:
    for args in (["users", "create", "a@example.com"], ["serve", "--demo"], ["sites", "list"]):
        done = without_server(args)
        assert done.returncode == 1, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith(f"error: `apiauth {args[0]}` is an operator command")
        assert lines[0].endswith(SERVER_EXTRA)


def test_help_of_the_client_install_lists_its_commands_and_names_the_extra() -> None:
    done = without_server(["--help"])
    assert done.returncode == 0, done.stderr
    assert "run" in done.stdout
    assert "secrets" in done.stdout
    assert SERVER_EXTRA in done.stdout
    usage = without_server(["run", "--help"])
    assert "Usage: apiauth run [OPTIONS] -- CMD" in usage.stdout


@pytest.mark.e2e
@pytest.mark.over_http
def test_pip_install_apiauth_alone_runs_a_build_with_a_function_token(
    site: tuple[LiveServer, str], tmp_path: Path
) -> None:
    if not IN_CI:
        pytest.skip("builds a fresh virtualenv with `pip install <repo>` (about a minute): CI only")
    server, token = site
    env_dir = tmp_path / "client-venv"
    venv.create(env_dir, with_pip=True)
    pip = subprocess.run(
        [str(env_dir / "bin" / "pip"), "install", "--quiet", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    installed = subprocess.run(
        [
            str(env_dir / "bin" / "python"),
            "-c",
            f"import importlib.util as u; print([m for m in {SERVER_MODULES!r} if u.find_spec(m)])",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert installed.stdout.strip() == "[]", "the client install brought server dependencies"
    apiauth = str(env_dir / "bin" / "apiauth")
    env = client_env(server.url, token)
    ran = subprocess.run(
        [apiauth, "run", "--", sys.executable, "-c", CHILD],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    assert "child got apiauth_fn_" in ran.stdout
    secrets = subprocess.run(
        [apiauth, "secrets"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert secrets.returncode == 0, secrets.stderr
    assert "│ github" in secrets.stdout
    operator = subprocess.run(
        [apiauth, "sites", "list"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert operator.returncode == 1
    assert operator.stderr.strip().endswith(SERVER_EXTRA)
