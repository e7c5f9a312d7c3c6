"""Real `apiauth` processes for end-to-end tests: a `serve --demo` server, one-shot CLI
commands, and `apiauth connect` running in the background while a "person" consents.

Everything runs the installed console script (`<venv>/bin/apiauth`), the way a user would,
with an environment built from scratch: the parent's environment minus every `APIAUTH_*`
variable, plus the data dir, database and public URL of the server under test.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

from tests.consent import consent

APIAUTH = Path(sys.executable).parent / "apiauth"
# Generous: a loaded 2-core machine can take tens of seconds to start a server; a server
# that fails exits, and that is seen at once.
READY_TIMEOUT = 90.0
STOP_TIMEOUT = 10.0
CLI_TIMEOUT = 60.0


def stop_process(process: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL if it has not ended within 10 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)


def apiauth_env(data_dir: Path, database_url: str | None, port: int) -> dict[str, str]:
    """The parent's environment without any `APIAUTH_*`, plus what points at one server.

    `database_url=None` leaves `APIAUTH_DATABASE_URL` unset (the SQLite default in the data
    dir)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIAUTH_")}
    env["APIAUTH_DATA_DIR"] = str(data_dir)
    env["APIAUTH_PUBLIC_URL"] = f"http://127.0.0.1:{port}"
    if database_url is not None:
        env["APIAUTH_DATABASE_URL"] = database_url
    return env


def client_env(url: str, token: str) -> dict[str, str]:
    """What a build or function gets: only `APIAUTH_TOKEN` and `APIAUTH_URL`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIAUTH_")}
    env["APIAUTH_TOKEN"] = token
    env["APIAUTH_URL"] = url
    return env


def run_function(url: str, token: str, script: str) -> Any:
    """`script` run as a function is (a separate Python with only `APIAUTH_URL` and
    `APIAUTH_TOKEN`), and the JSON it printed."""
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=client_env(url, token),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def run_cli(
    args: Sequence[str],
    env: Mapping[str, str],
    input: str | None = None,
    *,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """`apiauth ARGS...` to completion: text output captured, 60 s at most."""
    return subprocess.run(
        [str(APIAUTH), *args],
        env=dict(env),
        input=input,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        cwd=cwd,
        check=False,
    )


class ServerProcess:
    """`apiauth serve --demo --port P` as a child process, output kept in files."""

    def __init__(self, workdir: Path, database_url: str | None, port: int) -> None:
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = apiauth_env(self.data_dir, database_url, port)
        self.stdout_path = workdir / "server.stdout"
        self.stderr_path = workdir / "server.stderr"
        self.process: subprocess.Popen[bytes] | None = None
        self._logs: list[IO[bytes]] = []
        self.extra_args: list[str] = []
        self.ready_timeout = READY_TIMEOUT

    def start(self) -> None:
        if self.process is not None:
            raise RuntimeError("the server is running already")
        # Append: a restart keeps the earlier log, so the log checks see the whole run.
        stdout = self.stdout_path.open("ab")
        stderr = self.stderr_path.open("ab")
        self._logs = [stdout, stderr]
        self.process = subprocess.Popen(
            [str(APIAUTH), "serve", "--demo", "--port", str(self.port), *self.extra_args],
            env=self.env,
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.ready_timeout
        with httpx.Client(timeout=2) as http:
            while True:
                code = self.process.poll()
                if code is not None:
                    self.process = None
                    self._close_logs()
                    raise RuntimeError(
                        f"`apiauth serve` exited with status {code} before it was ready; "
                        f"its stderr:\n{self.log()[-4000:]}"
                    )
                try:
                    if http.get(f"{self.url}/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"`apiauth serve` was not ready within {self.ready_timeout:g} s; "
                        f"its stderr:\n{self.log()[-4000:]}"
                    )
                time.sleep(0.1)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 10 s. Returns the exit status (None if not running)."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT)
        self._close_logs()
        return process.returncode

    def kill(self) -> None:
        """SIGKILL: the process dies wherever it is, as in a crash."""
        process, self.process = self.process, None
        if process is not None:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)
        self._close_logs()

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        """Everything the server wrote so far, stdout and stderr."""
        parts = []
        for path in (self.stderr_path, self.stdout_path):
            if path.exists():
                parts.append(path.read_text(encoding="utf-8", errors="replace"))
        return "\n".join(parts)

    def _close_logs(self) -> None:
        for log in self._logs:
            log.close()
        self._logs = []


@dataclass(frozen=True)
class DemoOwner:
    """A running `serve --demo` whose owner a newcomer made from the command line: `api`
    calls it with the owner's personal token, `browser` is the owner's browser."""

    server: ServerProcess
    api: httpx.Client
    browser: httpx.Client


@contextmanager
def demo_with_owner(workdir: Path, port: int, *, public_url: bool = True) -> Iterator[DemoOwner]:
    """`apiauth serve --demo --port port` (`public_url=False`: without APIAUTH_PUBLIC_URL),
    then `apiauth users create` and `apiauth tokens create`, as the README has a newcomer
    do; stopped afterwards."""
    server = ServerProcess(workdir, None, port)
    if not public_url:
        del server.env["APIAUTH_PUBLIC_URL"]
    server.start()
    try:
        owner = run_cli(
            ["users", "create", "owner@example.com", "--password-stdin"],
            server.env,
            "correct horse\n",
            cwd=workdir,
        )
        assert owner.returncode == 0, owner.stderr
        pat = run_cli(["tokens", "create"], server.env, cwd=workdir).stdout.strip()
        with (
            httpx.Client(
                base_url=server.url, headers={"Authorization": f"Bearer {pat}"}, timeout=30
            ) as api,
            httpx.Client(timeout=30) as browser,
        ):
            yield DemoOwner(server, api, browser)
    finally:
        server.stop()


@dataclass
class ConnectOutcome:
    returncode: int
    stdout: str
    stderr: str
    authorize_url: str
    callback: httpx.Response


class BackgroundConnect:
    """`apiauth connect SITE PROVIDER [--scope S]...` waiting in the background.

    The command prints the authorize URL on stdout on a line of its own (hints go to stderr)
    and then waits for the provider to send the browser back."""

    def __init__(
        self, site: str, provider: str, env: Mapping[str, str], scopes: Sequence[str] = ()
    ) -> None:
        args = ["connect", site, provider]
        for scope in scopes:
            args += ["--scope", scope]
        self.process = subprocess.Popen(
            [str(APIAUTH), *args],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stdout: list[str] = []
        self._stderr: list[str] = []
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        self._readers = [
            threading.Thread(target=self._pump, args=(self.process.stdout, self._stdout, True)),
            threading.Thread(target=self._pump, args=(self.process.stderr, self._stderr, False)),
        ]
        for reader in self._readers:
            reader.daemon = True
            reader.start()

    def _pump(self, stream: IO[str], into: list[str], announce: bool) -> None:
        for line in stream:
            into.append(line)
            if announce:
                self._lines.put(line)
        if announce:
            self._lines.put(None)

    def authorize_url(self, timeout: float = 30.0) -> str:
        """The first stdout line that is a URL; fails with the stderr if none comes."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                raise AssertionError(
                    f"`apiauth connect` printed no URL within {timeout:g} s; "
                    f"stderr: {''.join(self._stderr)[-2000:]}"
                ) from None
            if line is None:
                code = self.process.wait(timeout=CLI_TIMEOUT)
                self._join()
                raise AssertionError(
                    f"`apiauth connect` exited ({code}) without printing a URL; "
                    f"stderr: {''.join(self._stderr)[-2000:]}"
                )
            if line.strip().startswith(("http://", "https://")):
                return line.strip()

    def wait(self, timeout: float = CLI_TIMEOUT) -> tuple[int, str, str]:
        """Wait for the command to end: (exit status, stdout, stderr)."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._join()
        return code, "".join(self._stdout), "".join(self._stderr)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT)
        self._join()

    def _join(self) -> None:
        for reader in self._readers:
            reader.join(timeout=STOP_TIMEOUT)


def connect_with_consent(
    http: httpx.Client,
    env: Mapping[str, str],
    site: str,
    provider: str,
    *,
    scopes: Sequence[str] = (),
    button: str = "Authorize",
    untick: Sequence[str] = (),
) -> ConnectOutcome:
    """Run `apiauth connect` in the background, consent (or deny) at the emulator's page
    like a person would, and wait for the command to finish."""
    command = BackgroundConnect(site, provider, env, scopes)
    try:
        url = command.authorize_url()
        callback = consent(http, url, button=button, untick=untick)
        code, stdout, stderr = command.wait()
    finally:
        command.kill()
    return ConnectOutcome(code, stdout, stderr, url, callback)
