"""`@apiauth/client` (clients/js) against a real `apiauth serve --demo`: each JavaScript and
TypeScript example runs in its own Node process, as its platform would call it, with only
what a deployment sets (`APIAUTH_TOKEN`, `APIAUTH_URL`, the API base), and the tokens it gets
are accepted by the emulated APIs.

The package is used the way an app installs it: `node_modules/@apiauth/client` in the app's
directory is the built package (`npm ci && npm run build` in clients/js, which `make test`
does); TypeScript examples are compiled there with the package's pinned `tsc` against the
built `.d.ts`. Outside CI the module is skipped when Node, npm or the build is missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from apiauth.providers import emulated_url
from tests.consent import consent
from tests.databases import IN_CI
from tests.processes import ServerProcess, client_env, demo_with_owner
from tests.servers import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "clients" / "js"
EXAMPLES = ROOT / "examples"
RUNNER = Path(__file__).resolve().parent / "js" / "run_example.mjs"
NODE_TIMEOUT = 60.0
NOT_CONNECTED = "Spotify is not connected for this site"


def require_package() -> str:
    """The `node` executable, once the package is built; a skip (a failure in CI) otherwise."""
    node, npm = shutil.which("node"), shutil.which("npm")
    problem = None
    if node is None or npm is None:
        problem = "node and npm are not installed (apt-get install nodejs npm)"
    elif (
        not (PACKAGE / "dist" / "esm" / "index.js").exists()
        or not (PACKAGE / "node_modules" / "typescript").exists()
    ):
        problem = (
            "clients/js is not built: cd clients/js && npm ci && npm run build (make test does)"
        )
    if problem is not None:
        if IN_CI:
            pytest.fail(problem)
        pytest.skip(problem)
    assert node is not None
    return node


@dataclass(repr=False)
class Demo:
    server: ServerProcess
    site_token: str  # `my-site`: Spotify and GitHub connected
    bare_token: str  # `bare-site`: API Authentication on, nothing connected
    node: str
    app: Path  # an app directory with @apiauth/client installed
    installed: dict[str, Path] = field(default_factory=dict)

    def env(self, token: str | None) -> dict[str, str]:
        env = client_env(self.server.url, token or "")
        if token is None:
            del env["APIAUTH_TOKEN"]
        emulator = f"{self.server.url}/_emulator"
        env["SPOTIFY_API_URL"] = emulated_url("https://api.spotify.com/v1", "spotify", emulator)
        env["GITHUB_API_URL"] = emulated_url("https://api.github.com", "github", emulator)
        return env

    def node_run(self, *args: str, token: str | None, cwd: Path | None = None) -> Any:
        """`node ARGS...` with a deployment's environment; its stdout's last line as JSON."""
        result = subprocess.run(
            [self.node, *args],
            env=self.env(token),
            cwd=cwd or self.app,
            capture_output=True,
            text=True,
            timeout=NODE_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(
                f"node {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}"
            )
        return json.loads(result.stdout.strip().splitlines()[-1])

    def install(self, example: str) -> Path:
        """Copy an example's source into the app directory (compiling TypeScript there)."""
        if example in self.installed:
            return self.installed[example]
        source = EXAMPLES / example
        target = self.app / example.replace("/", "_")
        shutil.copy(source, target)
        if target.suffix == ".ts":
            tsc = PACKAGE / "node_modules" / "typescript" / "bin" / "tsc"
            compiled = subprocess.run(
                [
                    self.node,
                    str(tsc),
                    "--strict",
                    "--target",
                    "es2022",
                    "--module",
                    "nodenext",
                    "--lib",
                    "es2022,dom",
                    str(target),
                ],
                cwd=self.app,
                capture_output=True,
                text=True,
                timeout=NODE_TIMEOUT,
                check=False,
            )
            assert compiled.returncode == 0, compiled.stdout + compiled.stderr
            target = target.with_suffix(".js")
        self.installed[example] = target
        return target


def _app_directory(root: Path) -> Path:
    """What `npm install @apiauth/client` leaves: the package under node_modules."""
    app = root / "app"
    (app / "node_modules" / "@apiauth").mkdir(parents=True)
    (app / "node_modules" / "@apiauth" / "client").symlink_to(PACKAGE, target_is_directory=True)
    (app / "package.json").write_text('{"private": true, "type": "module"}\n', encoding="utf-8")
    return app


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    node = require_package()
    workdir = tmp_path_factory.mktemp("js-client")
    with demo_with_owner(workdir, free_port()) as demo:
        api, browser = demo.api, demo.browser
        tokens = {}
        for site in ("my-site", "bare-site"):
            api.post("/api/v1/sites", json={"name": site}).raise_for_status()
            enabled = api.post(f"/api/v1/sites/{site}/api-auth").raise_for_status()
            tokens[site] = enabled.json()["token"]
        for provider in ("spotify", "github"):
            started = api.post(
                "/api/v1/sites/my-site/connections", json={"provider": provider}
            ).raise_for_status()
            callback = consent(browser, started.json()["authorize_url"])
            assert callback.status_code == 200, callback.text[-1500:]
        yield Demo(
            demo.server, tokens["my-site"], tokens["bare-site"], node, _app_directory(workdir)
        )


# --------------------------------------------------------------------------- Netlify's sample


def test_netlify_sample_with_only_its_import_changed_answers_ready(demo: Demo) -> None:
    function = demo.install("netlify-function-ts/netlify/functions/check-status.ts")
    answer = demo.node_run(
        str(RUNNER), "handler", str(function), "handler", "{}", token=demo.site_token
    )
    assert answer["statusCode"] == 200
    assert json.loads(answer["body"]) == {"ready": True}


def test_netlify_sample_says_how_to_connect_spotify_on_a_site_without_it(demo: Demo) -> None:
    function = demo.install("netlify-function-ts/netlify/functions/check-status.ts")
    answer = demo.node_run(
        str(RUNNER), "handler", str(function), "handler", "{}", token=demo.bare_token
    )
    assert answer["statusCode"] == 412
    assert NOT_CONNECTED in json.loads(answer["body"])["message"]


def test_netlify_sample_takes_the_token_from_the_event(demo: Demo) -> None:
    function = demo.install("netlify-function-ts/netlify/functions/check-status.ts")
    event = json.dumps({"apiauth_token": demo.site_token})
    answer = demo.node_run(str(RUNNER), "handler", str(function), "handler", event, token=None)
    assert json.loads(answer["body"]) == {"ready": True}


# --------------------------------------------------------------------------- other runtimes


def test_plain_node_handler_calls_spotify_with_its_bearer_token(demo: Demo) -> None:
    handler = demo.install("node-function/handler.mjs")
    # As its README runs it: `node handler.mjs`.
    answer = demo.node_run(str(handler), token=demo.site_token)
    assert answer == {"ready": True, "account": "Demo Listener"}


def test_aws_lambda_handler_reaches_github_through_the_proxy(demo: Demo) -> None:
    handler = demo.install("aws-lambda-node/index.cjs")
    event = json.dumps({"version": "2.0", "rawPath": "/whoami", "headers": {}})
    answer = demo.node_run(
        str(RUNNER), "handler", str(handler), "handler", event, token=demo.site_token
    )
    assert answer["statusCode"] == 200
    assert json.loads(answer["body"]) == {
        "path": "/whoami",
        "login": "octocat",
        "name": "The Octocat",
    }


def test_aws_lambda_handler_passes_on_the_brokers_refusal_of_a_made_up_token(demo: Demo) -> None:
    handler = demo.install("aws-lambda-node/index.cjs")
    answer = demo.node_run(
        str(RUNNER), "handler", str(handler), "handler", "{}", token="apiauth_site_made-up-token"
    )
    assert answer["statusCode"] == 401
    assert "made-up" not in answer["body"]


def test_worker_fetch_handler_reads_github_from_its_bindings(demo: Demo) -> None:
    worker = demo.install("cloudflare-worker/worker.ts")
    answer = demo.node_run(
        str(RUNNER), "worker", str(worker), "https://worker.example/me", token=demo.site_token
    )
    assert answer["status"] == 200
    assert answer["body"]["path"] == "/me"
    assert answer["body"]["login"] == "octocat"
    assert answer["body"]["scopes"]


# --------------------------------------------------------------------------- the package's API


SCRIPT = """
import { createFunctionToken, getSecrets, Unauthorized } from "@apiauth/client";
const minted = await createFunctionToken({ ttlSeconds: 120, providers: ["spotify"] });
const readable = await getSecrets(undefined, { token: minted.token });
let refused = null;
try {
  await getSecrets(undefined, { token: "apiauth_fn_made-up" });
} catch (error) {
  refused = { unauthorized: error instanceof Unauthorized, message: error.message };
}
console.log(JSON.stringify({
  prefix: minted.token.slice(0, 11),
  lifetime: Math.round((minted.expiresAt.getTime() - Date.now()) / 1000),
  providers: Object.keys(readable),
  expiresAt: readable.spotify.expiresAt instanceof Date,
  refused,
}));
"""


def test_function_token_minted_in_node_reads_only_what_it_was_given(demo: Demo) -> None:
    script = demo.app / "mint.mjs"
    script.write_text(SCRIPT, encoding="utf-8")
    answer = demo.node_run(str(script), token=demo.site_token)
    assert answer["prefix"] == "apiauth_fn_"
    assert 60 < answer["lifetime"] <= 120
    assert answer["providers"] == ["spotify"]
    assert answer["expiresAt"] is True
    assert answer["refused"]["unauthorized"] is True
    assert "apiauth_fn_made-up" not in answer["refused"]["message"]
    assert "update APIAUTH_TOKEN" in answer["refused"]["message"]
