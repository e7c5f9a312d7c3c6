"""Every example in `examples/` runs, as its README says, against a real `apiauth serve --demo`.

One server for the module (SQLite: the examples are not storage tests), one site with all six
providers connected from the command line, and one site with API Authentication on but nothing
connected. Each example runs in its own Python process with only what a deployment would set:
`APIAUTH_TOKEN`, `APIAUTH_URL` and the provider's API base URL, which the tests point at the
emulator (`<server>/_emulator/<provider>/<host>/<path>`); the examples default to the real APIs.
The SDKs are the real ones, configured through their own base-URL options, unpatched.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from apiauth.emulator.api_endpoints import ENDPOINTS
from apiauth.providers import emulated_url
from tests.consent import consent, press_connect
from tests.databases import IN_CI
from tests.processes import ServerProcess, client_env, run_cli, stop_process
from tests.servers import free_port

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PROVIDERS = ["github", "salesforce", "spotify", "stripe", "box", "contentful"]
# The import names of what `pip install '.[examples]'` brings (pyproject's `examples` extra).
SDKS = [
    "github",
    "simple_salesforce",
    "spotipy",
    "stripe",
    "box_sdk_gen",
    "contentful_management",
    "flask",
]
# Each example's API base variable and the real URL it defaults to.
API_URLS = {
    "GITHUB_API_URL": ("github", "https://api.github.com"),
    "SPOTIFY_API_URL": ("spotify", "https://api.spotify.com/v1"),
    "STRIPE_API_URL": ("stripe", "https://api.stripe.com"),
    "BOX_API_URL": ("box", "https://api.box.com"),
    "CONTENTFUL_API_URL": ("contentful", "https://api.contentful.com"),
}
EXAMPLE_TIMEOUT = 60.0
NOT_CONNECTED = "Spotify is not connected for this site"


@dataclass(repr=False)
class Demo:
    server: ServerProcess
    site_token: str  # `my-site`: every provider connected
    bare_token: str  # `bare-site`: API Authentication on, nothing connected

    def env(self, token: str) -> dict[str, str]:
        """A deployment's environment: the token, the broker, the emulated API bases."""
        env = client_env(self.server.url, token)
        emulator = f"{self.server.url}/_emulator"
        for variable, (provider, real_url) in API_URLS.items():
            env[variable] = emulated_url(real_url, provider, emulator)
        return env

    def run(
        self, example: str, *args: str, token: str | None = None, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`python <script> ARGS...` in the example's directory, as its README says."""
        script = EXAMPLES / example
        result = subprocess.run(
            [sys.executable, str(script), *args],
            env=self.env(token or self.site_token),
            cwd=cwd or script.parent,
            capture_output=True,
            text=True,
            timeout=EXAMPLE_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(f"{example} exited {result.returncode}:\n{result.stderr[-3000:]}")
        return result


def require_sdks() -> None:
    missing = [name for name in SDKS if importlib.util.find_spec(name) is None]
    if not missing:
        return
    message = (
        f"the examples' SDKs are not installed ({', '.join(missing)}): "
        "pip install -e '.[examples]' (make test does)"
    )
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    require_sdks()
    workdir = tmp_path_factory.mktemp("examples")
    server = ServerProcess(workdir, None, free_port())
    server.start()

    def cli(*args: str, input: str | None = None) -> str:
        result = run_cli(args, server.env, input, cwd=workdir)
        if result.returncode != 0:
            pytest.fail(f"`apiauth {' '.join(args[:2])}` failed: {result.stderr[-1500:]}")
        return result.stdout

    try:
        cli("users", "create", "owner@example.com", "--password-stdin", input="correct horse\n")
        pat = cli("tokens", "create").strip()
        with (
            httpx.Client(
                base_url=server.url, headers={"Authorization": f"Bearer {pat}"}, timeout=30
            ) as api,
            httpx.Client(timeout=30) as browser,
        ):
            tokens = {}
            for site in ("my-site", "bare-site"):
                api.post("/api/v1/sites", json={"name": site}).raise_for_status()
                enabled = api.post(f"/api/v1/sites/{site}/api-auth").raise_for_status()
                tokens[site] = enabled.json()["token"]
            # Connecting is what `apiauth connect` does (tests/test_end_to_end.py runs it);
            # here through the REST API, which spares six slow process starts: start the
            # flow, then consent at the emulated provider like a person.
            for provider in PROVIDERS:
                scopes = ["repo", "read:user"] if provider == "github" else None
                started = api.post(
                    "/api/v1/sites/my-site/connections",
                    json={"provider": provider, "scopes": scopes},
                ).raise_for_status()
                callback = consent(browser, started.json()["authorize_url"])
                if callback.status_code != 200:
                    pytest.fail(f"connecting {provider} failed: {callback.text[-1500:]}")
        yield Demo(server, tokens["my-site"], tokens["bare-site"])
    finally:
        server.stop()


@contextmanager
def web_app(
    demo: Demo, command: Sequence[str], port: int, token: str, *, cwd: Path | None = None
) -> Iterator[str]:
    """A web example served by its README's command (`uvicorn …`, `flask … run`) on `port`."""
    process = subprocess.Popen(
        [sys.executable, "-m", *command],
        env=demo.env(token),
        cwd=cwd or EXAMPLES / "check-status",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                stderr = process.stderr.read() if process.stderr else ""
                pytest.fail(f"`{' '.join(command)}` exited {process.returncode}: {stderr[-2000:]}")
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    pytest.fail(f"`{' '.join(command)}` did not listen on {url} within 20 s")
                time.sleep(0.1)
        yield url
    finally:
        stop_process(process)
        if process.stderr:
            process.stderr.close()


def lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return result.stdout.splitlines()


# --------------------------------------------------------------------------- check-status


def test_check_status_handler_says_ready_when_spotify_is_connected(demo: Demo) -> None:
    result = demo.run("check-status/handler.py")
    assert json.loads(result.stdout) == {"ready": True}


def test_check_status_handler_says_what_to_do_on_a_site_without_spotify(demo: Demo) -> None:
    result = demo.run("check-status/handler.py", token=demo.bare_token)
    assert NOT_CONNECTED in json.loads(result.stdout)["message"]


def test_check_status_lambda_answers_api_gateway_with_status_and_json_body(demo: Demo) -> None:
    ready = json.loads(demo.run("check-status/lambda_function.py").stdout)
    assert ready["statusCode"] == 200
    assert ready["headers"]["Content-Type"] == "application/json"
    assert json.loads(ready["body"]) == {"ready": True}

    bare = json.loads(demo.run("check-status/lambda_function.py", token=demo.bare_token).stdout)
    assert bare["statusCode"] == 412
    assert NOT_CONNECTED in json.loads(bare["body"])["message"]


@pytest.mark.parametrize(
    "server",
    [
        pytest.param(["uvicorn", "fastapi_app:app", "--port", "{port}"], id="fastapi"),
        pytest.param(["flask", "--app", "flask_app", "run", "--port", "{port}"], id="flask"),
    ],
)
def test_check_status_web_apps_answer_over_http(demo: Demo, server: list[str]) -> None:
    for token, status, check in [
        (demo.site_token, 200, lambda body: body == {"ready": True}),
        (demo.bare_token, 412, lambda body: NOT_CONNECTED in body["message"]),
    ]:
        port = free_port()
        command = [part.format(port=port) for part in server]
        with web_app(demo, command, port, token) as url:
            answer = httpx.get(f"{url}/check-status", timeout=15)
        assert answer.status_code == status
        assert check(answer.json()), answer.text


# --------------------------------------------------------------------------- provider SDKs


def test_github_example_lists_octocats_repositories_with_pygithub(demo: Demo) -> None:
    out = lines(demo.run("github/github_repos.py"))
    assert out[0] == "GitHub account: octocat (The Octocat)"
    assert out[1] == "granted scopes: repo, read:user"
    repos = {line.split("\t")[0]: line.split("\t")[1] for line in out[2:]}
    assert repos["octocat/Hello-World"] == "public"
    assert repos["octocat/Spoon-Knife"] == "public"
    # Connected with the `repo` scope, the private repository is listed too.
    assert repos["octocat/secret-plans"] == "private"


def test_salesforce_example_queries_accounts_at_the_instance_url(demo: Demo) -> None:
    out = lines(demo.run("salesforce/salesforce_accounts.py"))
    assert out[0] == "Salesforce user: demo@emulated.example"
    assert out[1] == "3 accounts"
    names = [line.split("\t")[1] for line in out[2:]]
    assert names == sorted(names)  # ORDER BY Name
    assert names[0] == "Burlington Textiles Corp"


def test_spotify_example_reads_the_profile_and_pages_through_playlists(demo: Demo) -> None:
    out = lines(demo.run("spotify/spotify_playlists.py"))
    assert out[0] == "Spotify account: Demo Listener (emulated-listener, premium)"
    # Two to a page: the third playlist came from following `next`.
    assert [line.split("\t")[0] for line in out[1:]] == [
        "Today's Top Hits",
        "Deep Focus",
        "Road Trip",
    ]


def test_stripe_example_acts_on_the_connected_account(demo: Demo) -> None:
    out = lines(demo.run("stripe/stripe_account.py"))
    assert out[0] == "connected account: acct_1EmuLat0rDemo42 (Demo Shop, US)"
    assert out[1] == "charges enabled: True"
    assert [line.split("\t")[0] for line in out[2:]] == [
        "customer cus_NffrFeUfNV2Hib",
        "customer cus_NffrFeUfNV2Hic",
        "customer cus_NffrFeUfNV2Hid",
    ]


def test_box_example_lists_the_root_folder_with_box_sdk_gen(demo: Demo) -> None:
    out = lines(demo.run("box/box_files.py"))
    assert out[0] == "Box account: Demo User (demo@example.com)"
    assert "folder\t11446500\tContracts" in out
    assert "file\t12345678\tQuarterly report.pdf" in out


def test_contentful_example_lists_spaces_and_entries(demo: Demo) -> None:
    out = lines(demo.run("contentful/contentful_entries.py"))
    assert out[0] == "Contentful account: editor@example.com"
    assert out[1] == "space yadj1kx9rmg0: Demo Blog"
    assert "  entry 5KsDBWseXY6QegucYAoacS\tHello, Contentful" in out


# --------------------------------------------------------------------------- build


def test_build_example_writes_a_page_of_repositories_with_a_function_token(
    demo: Demo, tmp_path: Path
) -> None:
    # As CI runs it: the site token in the environment, `apiauth run` around the build.
    command = [sys.executable, str(EXAMPLES / "build" / "build.py")]
    env = demo.env(demo.site_token)
    result = run_cli(
        ["run", "--ttl", "300", "--provider", "github", "--", *command], env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "not a function token" not in result.stderr
    assert "build can read: github\n" in result.stdout  # `--provider github` only
    assert "with 4 public repositories of octocat" in result.stdout
    page = (tmp_path / "public" / "index.html").read_text(encoding="utf-8")
    assert "<h1>Repositories of octocat</h1>" in page
    assert 'href="https://github.com/octocat/Hello-World"' in page
    assert "secret-plans" not in page  # private repositories stay off the public page


# --------------------------------------------------------------------------- emulator


def test_every_api_endpoint_of_the_examples_refuses_missing_and_made_up_tokens(
    demo: Demo,
) -> None:
    emulator = f"{demo.server.url}/_emulator"
    with httpx.Client(timeout=15) as http:
        for endpoint in ENDPOINTS:
            host = endpoint.host or "emulated.my.salesforce.com"
            path = endpoint.path.format(
                version="59.0",
                account="acct_1",
                folder="0",
                space="s",
                environment="master",
                user="me",
            )
            url = f"{emulator}/{endpoint.provider}/{host}{path}"
            for headers in ({}, {"Authorization": "Bearer made-up-token"}):
                status = http.get(url, headers=headers).status_code
                assert status == 401, f"{endpoint.provider} {path} answered {status}"


def test_github_repos_endpoint_pages_with_a_link_header(demo: Demo) -> None:
    token = json.loads(run_cli(["secrets", "--json"], demo.env(demo.site_token)).stdout)["github"][
        "bearer_token"
    ]
    api = demo.env(demo.site_token)["GITHUB_API_URL"]
    headers = {"Authorization": f"Bearer {token}"}
    first = httpx.get(f"{api}/user/repos?per_page=2", headers=headers)
    assert first.status_code == 200
    assert [repo["name"] for repo in first.json()] == ["Hello-World", "Spoon-Knife"]
    assert first.headers["X-OAuth-Scopes"] == "repo, read:user"
    last = httpx.get(first.links["last"]["url"], headers=headers).json()
    assert [repo["name"] for repo in last] == ["secret-plans"]


# --------------------------------------------------------------------------- visitors


def test_each_visitor_connects_their_own_github_and_the_site_acts_for_them(demo: Demo) -> None:
    port = free_port()
    command = ["flask", "--app", "app", "run", "--port", str(port)]
    with (
        web_app(demo, command, port, demo.bare_token, cwd=EXAMPLES / "visitors") as site,
        httpx.Client(timeout=30) as browser,
    ):
        before = browser.get(f"{site}/repos", params={"visitor": "alice"})
        assert before.status_code == 404
        assert "has not connected GitHub" in before.json()["message"]

        link = browser.get(f"{site}/connect", params={"visitor": "alice"})
        assert link.status_code == 303
        assert link.headers["location"].startswith(f"{demo.server.url}/connect/")
        pressed = press_connect(browser, link.headers["location"], "github")
        assert pressed.status_code == 303
        back = consent(browser, pressed.headers["location"])
        assert back.status_code == 303
        landed = browser.get(back.headers["location"])
        assert landed.json() == {"connected": "github"}

        alice = browser.get(f"{site}/repos", params={"visitor": "alice"}).json()
        assert alice["login"] == "octocat"
        assert alice["repos"]
        bob = browser.get(f"{site}/repos", params={"visitor": "bob"})
        assert bob.status_code == 404, "one visitor's connection never serves another"

        forgotten = browser.post(f"{site}/forget", params={"visitor": "alice"}).json()
        assert forgotten == {"deleted_connections": 1, "revoked_at_provider": 1}
        assert browser.get(f"{site}/repos", params={"visitor": "alice"}).status_code == 404
