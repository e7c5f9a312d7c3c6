"""`apiauth doctor` (issue 20): on a deployment that works it finds nothing wrong and exits
0; on a broken one it names every problem at once, with a fix each, and exits 1. The real
command against a real database (SQLite and PostgreSQL) and a live server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import delete

from apiauth.config import Settings
from apiauth.domain.broker import EMULATOR_URL_KEY
from apiauth.domain.doctor import run_doctor
from apiauth.store.models import ServerState
from apiauth.vault import KeyFile
from tests.live_site import Site
from tests.processes import apiauth_env, run_cli
from tests.servers import LiveServer, free_port, running_server


def doctor(env: dict[str, str], *args: str) -> tuple[int, Any]:
    done = run_cli(["doctor", "--json", *args], env)
    return done.returncode, json.loads(done.stdout)


def by_status(report: dict[str, Any], status: str) -> dict[str, str]:
    return {c["name"]: c["message"] for c in report["checks"] if c["status"] == status}


def test_doctor_finds_nothing_wrong_with_a_running_deployment(
    live: LiveServer, http: httpx.Client, database_url: str
) -> None:
    Site(live, http).connect("github")
    settings = live.broker.settings
    if database_url.startswith("sqlite:///"):
        # The tests copy a migrated template; apiauth makes its own SQLite file owner-only.
        Path(database_url.removeprefix("sqlite:///")).chmod(0o600)
    env = apiauth_env(settings.data_dir, database_url, int(live.url.rsplit(":", 1)[1]))
    code, report = doctor(env)
    assert by_status(report, "fail") == {}
    assert by_status(report, "warn") == {}
    assert code == 0
    ok = by_status(report, "ok")
    assert {
        "database",
        "schema",
        "master key",
        "public URL",
        "OAuth apps",
        "clock",
        "replicas",
    } <= set(ok)
    assert "serve + refresher" in ok["replicas"]
    assert "github" in ok["OAuth apps"]
    human = run_cli(["doctor"], env)
    assert human.returncode == 0
    assert "0 problem(s), 0 warning(s)." in human.stdout


def test_doctor_names_each_problem_of_a_broken_deployment(
    tmp_path: Path, database_url: str, http: httpx.Client
) -> None:
    with running_server(tmp_path, database_url) as server:
        Site(server, http).connect("github")
        settings = server.broker.settings
        # Afterwards: `serve` without --demo (no emulator, so no OAuth app for github) ...
        with server.broker.sessions() as db, db.begin():
            db.execute(delete(ServerState).where(ServerState.key == EMULATOR_URL_KEY))
    # ... a key dropped from the key file before the records were re-wrapped ...
    key_file = KeyFile(settings.key_file)
    key_file.keep_only(key_file.add_new_key().id)
    # ... loose permissions, and a public URL where nothing answers.
    settings.key_file.chmod(0o644)
    settings.data_dir.chmod(0o777)
    env = apiauth_env(settings.data_dir, database_url, free_port())

    code, report = doctor(env)
    assert code == 1
    failed = by_status(report, "fail")
    assert "records cannot be opened with any key" in failed["master key"]
    assert "github has connections but no OAuth app" in failed["OAuth apps"]
    assert "cannot be reached from here" in failed["public URL"]
    assert (
        "writable by everyone" in failed["permissions"]
        or "readable by group/others" in failed["permissions"]
    )
    messages = [c["message"] for c in report["checks"] if c["name"] == "permissions"]
    assert any("key file" in m and "mode 644" in m for m in messages)
    assert any("data dir" in m and "mode 777" in m for m in messages)
    assert "no apiauth process has been seen" in by_status(report, "warn")["replicas"]
    assert report["problems"] >= 5
    for check in report["checks"]:
        if check["status"] == "fail":
            assert check["fix"], f"{check['name']} has no fix"
    human = run_cli(["doctor"], env)
    assert human.returncode == 1
    assert "fix: chmod 600" in human.stdout
    assert "problem(s)" in human.stdout


def test_doctor_on_an_unreachable_database_says_so_and_skips_what_needs_it(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none"
    env = apiauth_env(tmp_path / "data", url, free_port())
    code, report = doctor(env)
    assert code == 1
    assert "does not answer" in by_status(report, "fail")["database"]
    assert {"OAuth apps", "clock", "replicas"} <= set(by_status(report, "skip"))
    assert not (tmp_path / "data").exists(), "doctor created the data dir"


def test_plain_http_on_a_public_host_is_a_problem_outside_demo_mode(tmp_path: Path) -> None:
    # A public host is out of reach here (no network): httpx's transport answers for it.
    answers = httpx.MockTransport(lambda request: httpx.Response(200, json={"status": "ok"}))
    settings = Settings(data_dir=tmp_path / "data", public_url="http://auth.example.com")
    with httpx.Client(transport=answers) as client:
        report = run_doctor(settings, http=client)
    https = next(check for check in report.checks if check.name == "https")
    assert https.status == "fail"
    assert "travel unencrypted" in https.message
    assert "https://" in (https.fix or "")
    with httpx.Client(transport=answers) as client:
        secure = run_doctor(
            settings.model_copy(update={"public_url": "https://auth.example.com"}), http=client
        )
    assert not [check for check in secure.checks if check.name == "https"]


def test_doctor_warns_when_every_client_may_set_its_own_address(tmp_path: Path) -> None:
    answers = httpx.MockTransport(lambda request: httpx.Response(200, json={"status": "ok"}))

    def trusted_proxies(value: str) -> tuple[str, str]:
        settings = Settings(data_dir=tmp_path / "data", trusted_proxies=value)
        with httpx.Client(transport=answers) as client:
            report = run_doctor(settings, http=client)
        check = next(check for check in report.checks if check.name == "trusted proxies")
        return check.status, check.message

    assert trusted_proxies("") == (
        "ok",
        "none: client addresses are the TCP peer's (set APIAUTH_TRUSTED_PROXIES when a proxy "
        "is in front)",
    )
    status, message = trusted_proxies("10.0.0.0/8, 127.0.0.1")
    assert status == "ok"
    assert "10.0.0.0/8" in message
    assert "127.0.0.1" in message
    for everyone in ("0.0.0.0/0", "10.0.0.1,::/0"):
        status, message = trusted_proxies(everyone)
        assert status == "warn", everyone
        assert "any client can set the address" in message
