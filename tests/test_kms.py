"""The master key in a KMS (issue 20): `APIAUTH_KMS=aws` against moto's standalone server on
loopback. Tokens move from the local key to a KMS key online and survive restarts without
the key file; a KMS that cannot be reached stops a start with a clear message, while a
running server keeps using the keys it unwrapped; a KMS key taken away stops it within the
cache's age (a refresh then answers 503); reads do not call the KMS. The cache's rules on
their own, with an in-memory KMS behind the same interface as AWS's."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import create_engine, select

from apiauth.config import Settings
from apiauth.domain import backup, connections
from apiauth.domain.master_keys import open_keys
from apiauth.domain.token_store import open_sealed_token
from apiauth.kms import KmsRefused, KmsUnavailable, StoredKey, VaultKeys, WrappedKeys
from apiauth.metrics import Metrics
from apiauth.store.models import Connection, WrappedKey
from apiauth.vault import KeyConfigError, KeyRing, MasterKey, UnknownKeyError, Vault
from tests.kms_server import KEY_ALIAS, MotoKms, aws_env, moto_kms
from tests.live_site import Site
from tests.processes import ServerProcess, client_env, connect_with_consent, run_cli
from tests.seeding import seed_site
from tests.servers import free_port, running_server

SITE = "my-site"


def fingerprint(answer: dict[str, Any]) -> str:
    """Compare secrets answers without ever printing a token in a failure."""
    return hashlib.sha256(json.dumps(answer, sort_keys=True).encode()).hexdigest()


@pytest.fixture
def kms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoKms]:
    """moto's KMS with a key, and boto3 of this process pointed at it."""
    with moto_kms(tmp_path) as server:
        server.create_key()
        for name, value in server.env.items():
            monkeypatch.setenv(name, value)
        yield server


def read(http: httpx.Client, server: ServerProcess, token: str) -> dict[str, Any]:
    answer = http.get(f"{server.url}/api/v1/secrets", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.status_code
    body: dict[str, Any] = answer.json()
    return body


def key_ids_of_tokens(database_url: str) -> set[str]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as db:
            blobs = db.scalars(select(Connection.token_enc)).all()
            wrapped = set(db.scalars(select(WrappedKey.id)).all())
    finally:
        engine.dispose()
    ids = {Vault.key_id_of(blob) for blob in blobs if blob is not None}
    assert ids <= wrapped, "a token is sealed under a key that is not KMS-wrapped"
    return ids


@pytest.mark.e2e
def test_tokens_move_to_a_kms_key_online_and_survive_restarts_without_the_key_file(
    tmp_path: Path, database_url: str
) -> None:
    with moto_kms(tmp_path) as kms, httpx.Client(timeout=20) as http:
        alias = kms.create_key()
        server = ServerProcess(tmp_path, database_url, free_port())
        server.start()
        try:
            env = server.env
            token = seed_site(server, SITE, ("github", "box")).site_token
            before = fingerprint(read(http, server, token))

            # Every server gets the KMS settings; it seals with the KMS key from now on (a
            # provider connected again) and still opens what the local key sealed (github).
            server.stop()
            env.update({"APIAUTH_KMS": "aws", "APIAUTH_KMS_KEY_ID": alias, **kms.env})
            server.start()
            assert fingerprint(read(http, server, token)) == before
            # (The demo emulator forgot its grants with the restart: box is connected again.)
            assert connect_with_consent(http, env, SITE, "box").returncode == 0
            after = fingerprint(read(http, server, token))

            rotated = run_cli(["keys", "rotate"], env)  # while the server serves
            assert rotated.returncode == 0, rotated.stderr[-1500:]
            assert "records moved to key" in rotated.stdout
            assert "aws KMS key alias/apiauth-test" in rotated.stdout
            assert "No record needs the local key file" in rotated.stderr
            assert fingerprint(read(http, server, token)) == after
            if database_url.startswith("sqlite"):
                assert len(key_ids_of_tokens(database_url)) == 1

            # The data dir's key is no longer needed: the KMS alone opens the tokens.
            (server.data_dir / "master.key").unlink()
            server.restart()
            assert fingerprint(read(http, server, token)) == after
            assert run_cli(["secrets", "--json"], client_env(server.url, token)).returncode == 0
        finally:
            server.stop()
        # Without the KMS, the database and the data dir open nothing: the server says why.
        kms.stop()
        with pytest.raises(RuntimeError) as failed:
            server.start()
        assert "could not be reached" in str(failed.value)
        assert "APIAUTH_KMS=aws" in str(failed.value)


def test_a_server_does_not_start_when_the_kms_cannot_be_reached(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, None, free_port())
    closed = f"http://127.0.0.1:{free_port()}"
    server.env.update({"APIAUTH_KMS": "aws", "APIAUTH_KMS_KEY_ID": "alias/x", **aws_env(closed)})
    with pytest.raises(RuntimeError) as failed:
        server.start()  # exits at once (ServerProcess waits 30 s for a server that is ready)
    message = str(failed.value)
    assert "exited with status 1 before it was ready" in message
    assert "cannot start with APIAUTH_KMS=aws: AWS KMS could not be reached at " + closed in message
    assert "Traceback" not in message


@pytest.mark.fast
def test_kms_without_a_key_id_is_a_clear_error(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, kms="aws")
    with pytest.raises(KeyConfigError, match="needs APIAUTH_KMS_KEY_ID"):
        open_keys(settings, None, metrics=Metrics(enabled=False), clock=lambda: datetime.now(UTC))


def test_reads_do_not_call_the_kms_and_keep_working_while_it_is_down(
    tmp_path: Path, database_url: str, http: httpx.Client, kms: MotoKms
) -> None:
    settings = {"kms": "aws", "kms_key_id": KEY_ALIAS, "kms_cache_seconds": 1}
    # A thousand reads in a second or two: the per-token rate limit is not what is tested.
    with running_server(
        tmp_path, database_url, refresher=False, rate_limit_per_token=0, **settings
    ) as server:
        broker = server.broker
        keys = broker.vault.keys
        assert isinstance(keys, VaultKeys)
        site = Site(server, http)
        site.connect("github")
        site.connect("box")
        calls = keys.wrapped.calls
        for _ in range(1000):
            site.read("github")
        with broker.sessions() as db:
            rows = db.execute(select(Connection.id, Connection.token_enc)).all()
        for _ in range(1000 // len(rows)):  # cold reads: every token opened by the vault
            for row in rows:
                assert open_sealed_token(broker, row.id, row.token_enc, remember=False)
        assert keys.wrapped.calls == calls, "reads called the KMS"

        kms.stop()
        time.sleep(1.2)  # past the cache's age: the KMS is asked again, and cannot answer
        refreshed = connections.refresh_site_connection(broker, site.owner, SITE, "box")
        assert refreshed.last_error is None
        site.connect("spotify")  # sealed and opened under the key unwrapped before
        assert site.read("spotify")["is_logged_in"]
        assert site.read("box")["is_logged_in"]
        assert keys.wrapped.calls > calls  # it did try


def test_a_kms_key_taken_away_stops_the_server_within_the_cache_age(
    tmp_path: Path, database_url: str, http: httpx.Client, kms: MotoKms
) -> None:
    settings = {"kms": "aws", "kms_key_id": KEY_ALIAS, "kms_cache_seconds": 1}
    with running_server(tmp_path, database_url, refresher=False, **settings) as server:
        site = Site(server, http)
        site.connect("box")
        kms.take_away()
        time.sleep(1.2)
        answer = http.post(
            f"{server.url}/api/v1/sites/{SITE}/connections/box/refresh",
            headers={"Authorization": f"Bearer {site.pat}"},
        )
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "kms_unavailable"
        assert answer.headers["retry-after"]


def test_a_backup_made_under_a_kms_key_restores_into_an_empty_database(
    tmp_path: Path, database_url: str, http: httpx.Client, kms: MotoKms
) -> None:
    settings = {"kms": "aws", "kms_key_id": KEY_ALIAS}
    with running_server(tmp_path / "source", database_url, refresher=False, **settings) as live:
        site = Site(live, http)
        site.connect("box")
        before = fingerprint(site.read("box"))
        file = tmp_path / "apiauth.backup"
        backup.write_backup(live.broker, file)
    header = json.loads(file.read_bytes().split(b"\n", 1)[0])
    assert header["wrapped_key"]["kms_key_id"] == KEY_ALIAS
    # A new deployment with the same KMS and nothing else: no key file, an empty database.
    target = tmp_path / "target"
    with running_server(
        target, f"sqlite:///{target / 'new.db'}", refresher=False, **settings
    ) as new:
        assert not (target / "data" / "master.key").exists()
        opened = backup.open_backup(new.broker, file)
        backup.restore_backup(new.broker, opened)
        new.broker.runtime.answers.clear()
        answer = http.get(
            f"{new.url}/api/v1/secrets", headers={"Authorization": f"Bearer {site.token}"}
        )
        assert answer.status_code == 200
        assert fingerprint(answer.json()["box"]) == before


# --- the cache's rules, with an in-memory KMS ------------------------------------------------


class MemoryKms:
    """A KMS in memory, behind the interface AWS KMS implements (`kms.KeyManagementService`)."""

    name = "memory"

    def __init__(self) -> None:
        self._key = AESGCM.generate_key(bit_length=256)
        self.reachable = True
        self.disabled = False
        self.calls = 0

    def _check(self) -> None:
        self.calls += 1
        if not self.reachable:
            raise KmsUnavailable("the memory KMS cannot be reached")
        if self.disabled:
            raise KmsRefused("the memory KMS key is disabled")

    def generate_key(self, kms_key_id: str) -> tuple[bytes, bytes]:
        self._check()
        plaintext = AESGCM.generate_key(bit_length=256)
        nonce = b"\0" * 11 + bytes([len(kms_key_id) % 256])
        return plaintext, nonce + AESGCM(self._key).encrypt(nonce, plaintext, kms_key_id.encode())

    def unwrap(self, wrapped: bytes, kms_key_id: str) -> bytes:
        self._check()
        return AESGCM(self._key).decrypt(wrapped[:12], wrapped[12:], kms_key_id.encode())

    def describe(self, kms_key_id: str) -> str:
        self._check()
        return f"memory key {kms_key_id}"


class MemoryStore:
    def __init__(self) -> None:
        self.keys: dict[str, StoredKey] = {}

    def get(self, key_id: str) -> StoredKey | None:
        return self.keys.get(key_id)

    def newest_for(self, service: str, kms_key_id: str) -> StoredKey | None:
        found = [
            k for k in self.keys.values() if (k.service, k.kms_key_id) == (service, kms_key_id)
        ]
        return max(found, key=lambda k: k.created_at) if found else None

    def add(self, key: StoredKey) -> None:
        self.keys.setdefault(key.id, key)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def wrapped_keys(kms: MemoryKms, store: MemoryStore, clock: Clock, **options: Any) -> WrappedKeys:
    return WrappedKeys(
        store, lambda name: kms, monotonic=clock, clock=lambda: datetime.now(UTC), **options
    )


@pytest.mark.fast
def test_an_unwrapped_key_is_used_for_its_age_then_asked_again() -> None:
    kms, store, clock = MemoryKms(), MemoryStore(), Clock()
    keys = wrapped_keys(kms, store, clock, cache_seconds=300)
    made = keys.for_kms_key("memory", "k1")
    assert kms.calls == 1  # made, and known without unwrapping
    for _ in range(1000):
        assert keys.get(made.id) == made
    assert kms.calls == 1
    clock.now += 301
    assert keys.get(made.id) == made
    assert kms.calls == 2


@pytest.mark.fast
def test_a_refusal_drops_the_key_but_an_unreachable_kms_keeps_it() -> None:
    kms, store, clock = MemoryKms(), MemoryStore(), Clock()
    keys = wrapped_keys(kms, store, clock, cache_seconds=10)
    made = keys.for_kms_key("memory", "k1")
    kms.reachable = False
    clock.now += 11
    assert keys.get(made.id) == made  # stale, kept while the KMS is away
    kms.reachable, kms.disabled = True, True
    with pytest.raises(KmsRefused):
        keys.get(made.id)
    kms.disabled = False
    assert keys.get(made.id) == made  # unwrapped anew
    other = wrapped_keys(kms, store, Clock())
    kms.reachable = False
    with pytest.raises(KmsUnavailable):
        other.get(made.id)  # never unwrapped here: nothing to fall back on


@pytest.mark.fast
def test_the_cache_is_bounded_and_unknown_ids_are_refused() -> None:
    kms, store, clock = MemoryKms(), MemoryStore(), Clock()
    keys = wrapped_keys(kms, store, clock, capacity=2)
    made = [keys.for_kms_key("memory", f"k{n}") for n in range(3)]
    calls = kms.calls
    keys.get(made[2].id)
    keys.get(made[1].id)
    assert kms.calls == calls  # the two newest are remembered
    keys.get(made[0].id)
    assert kms.calls == calls + 1  # the oldest was let go
    with pytest.raises(UnknownKeyError):
        keys.get("deadbeef")


@pytest.mark.fast
def test_a_vault_on_kms_keys_opens_what_the_local_key_sealed_and_seals_with_the_kms() -> None:
    kms, store, clock = MemoryKms(), MemoryStore(), Clock()
    local = MasterKey.generate()
    old = Vault(KeyRing([local])).seal(b"a token", b"aad")
    vault = Vault(VaultKeys(KeyRing([local]), wrapped_keys(kms, store, clock), ("memory", "k1")))
    assert vault.open(old, b"aad") == b"a token"
    moved = vault.rewrap(old, b"aad")
    assert Vault.key_id_of(moved) == vault.active_key_id != local.id
    kms_only = Vault(VaultKeys(None, wrapped_keys(kms, store, Clock()), ("memory", "k1")))
    assert kms_only.open(moved, b"aad") == b"a token"
    with pytest.raises(UnknownKeyError):
        kms_only.open(old, b"aad")
