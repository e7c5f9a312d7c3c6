"""moto's standalone server as the AWS KMS endpoint, on loopback: a real HTTP server speaking
the KMS API, reached by boto3 the way AWS itself is (`AWS_ENDPOINT_URL`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.databases import IN_CI
from tests.processes import stop_process
from tests.servers import free_port

MOTO_SERVER = Path(sys.executable).parent / "moto_server"
KEY_ALIAS = "alias/apiauth-test"


def aws_env(endpoint: str) -> dict[str, str]:
    """What boto3 needs to reach the stand-in KMS (and nothing of the developer's own AWS)."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


class MotoKms:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = aws_env(self.endpoint)
        self.log = workdir / "moto.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(self.endpoint + "/moto-api/", timeout=1)
                return
            except httpx.TransportError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    log = self.log.read_text()[-2000:]
                    raise RuntimeError(f"moto_server did not start: {log}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """Stop it: the KMS is unreachable from now on (its keys are gone with it)."""
        process, self.process = self.process, None
        if process is not None:
            stop_process(process)

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "kms",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def create_key(self, alias: str = KEY_ALIAS) -> str:
        client = self.client()
        key_id: str = client.create_key(Description="apiauth tests")["KeyMetadata"]["KeyId"]
        client.create_alias(AliasName=alias, TargetKeyId=key_id)
        return alias

    def take_away(self, alias: str = KEY_ALIAS) -> None:
        """The key is gone for apiauth: its alias deleted. (moto's Decrypt ignores a key's
        disabled state, which AWS refuses with DisabledException; both are a refusal.)"""
        self.client().delete_alias(AliasName=alias)


def require_moto() -> None:
    if MOTO_SERVER.exists() or shutil.which("moto_server"):
        return
    message = "moto_server is missing: pip install -e '.[dev]' (moto[server]) to run the KMS tests"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def moto_kms(workdir: Path) -> Iterator[MotoKms]:
    require_moto()
    kms = MotoKms(workdir)
    kms.start()
    try:
        yield kms
    finally:
        kms.stop()
