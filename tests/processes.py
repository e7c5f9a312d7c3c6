"""Real `apiauth` processes for end-to-end tests: a `serve --demo` server, one-shot CLI
commands, and `apiauth connect` running in the background while a "person" consents.

Everything runs the installed console script (`<venv>/bin/apiauth`), the way a user would,
with an environment built from scratch: the parent's environment minus every `APIAUTH_*`
variable, plus the data dir, database and public URL of the server under test.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from consent import consent

APIAUTH = Path(sys.executable).parent / "apiauth"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
CLI_TIMEOUT = 60.0


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
        deadline = time.monotonic() + READY_TIMEOUT
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
                        f"`apiauth serve` was not ready within {READY_TIMEOUT:g} s; "
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
