"""Bad input, by hand: oversized and malformed bodies, unicode where names go, huge scope lists
and path tricks in site names each get a clear 4xx with the API's JSON error, never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from apiauth.domain.members import create_member, create_personal_token
from apiauth.server.limits import MAX_BODY_BYTES
from tests.databases import fresh_postgres_database
from tests.servers import LiveServer, running_server


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """One live server per database for the whole module: these tests change nothing that
    another one reads (`my-site` is checked to survive every attempt)."""
    tmp = tmp_path_factory.mktemp("bad-input")
    if request.param == "sqlite":
        with running_server(tmp, f"sqlite:///{tmp / 'apiauth.db'}") as live:
            yield live
    else:
        for url in fresh_postgres_database():
            with running_server(tmp, url) as live:
                yield live


@pytest.fixture(scope="module")
def pat(server: LiveServer) -> dict[str, str]:
    owner = create_member(server.broker, "owner@example.com", None)
    token = create_personal_token(server.broker, owner, "bad-input")
    headers = {"Authorization": f"Bearer {token}"}
    created = httpx.post(server.url + "/api/v1/sites", json={"name": "my-site"}, headers=headers)
    assert created.status_code == 201
    return headers


@pytest.fixture
def api(server: LiveServer, pat: dict[str, str]) -> str:
    return server.url + "/api/v1"


def refused(response: httpx.Response, *statuses: int) -> dict[str, Any]:
    """The answer is one of `statuses` (all 4xx) with a JSON error that says something."""
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    body: dict[str, Any] = response.json()["error"]
    assert body["code"]
    assert body["message"]
    assert "Traceback" not in response.text
    return body


def test_a_body_over_one_megabyte_is_refused_with_413(
    api: str, http: httpx.Client, pat: dict[str, str]
) -> None:
    big = b'{"name": "' + b"a" * (2 * MAX_BODY_BYTES) + b'"}'
    json_headers = {**pat, "Content-Type": "application/json"}
    error = refused(http.post(f"{api}/sites", content=big, headers=json_headers), 413)
    assert error["code"] == "payload_too_large"

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit counts what arrives
        for start in range(0, len(big), 64 * 1024):
            yield big[start : start + 64 * 1024]

    answer = http.post(f"{api}/sites", content=chunked(), headers=json_headers)
    assert "content-length" not in answer.request.headers
    refused(answer, 413)
    # Without a token too: the size is checked before anything else reads the body.
    refused(http.post(f"{api}/sites", content=big), 413)

    # Just under the limit the body is read and judged on its content.
    near = b'{"name": "' + b"a" * (MAX_BODY_BYTES - 100) + b'"}'
    refused(http.post(f"{api}/sites", content=near, headers=json_headers), 422)
    assert http.get(f"{api}/sites", headers=pat).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        b'{"name":',
        b"not json at all",
        b'{"name": "x",}',
        b"\xff\xfe\x00garbage",
        b"[1, 2, 3]",
        b'"just a string"',
        b"null",
        b'{"name": 42}',
        b'{"name": ["my-site"]}',
        b'{"name": "ok-name", "unexpected": true}',
        b"[" * 50_000 + b"]" * 50_000,
    ],
)
def test_malformed_json_is_a_clear_4xx(
    api: str, http: httpx.Client, pat: dict[str, str], body: bytes
) -> None:
    headers = {**pat, "Content-Type": "application/json"}
    refused(http.post(f"{api}/sites", content=body, headers=headers), 400, 422)
    refused(http.post(f"{api}/sites/my-site/connections", content=body, headers=headers), 400, 422)


@pytest.mark.parametrize(
    "name",
    ["sïte", "名前", "emoji-🔑", "site\u200bname", "Upper", "x" * 64, "-dash", "a b", "\u0000"],
)
def test_a_site_name_outside_the_rules_is_refused_and_named(
    api: str, http: httpx.Client, pat: dict[str, str], name: str
) -> None:
    error = refused(http.post(f"{api}/sites", json={"name": name}, headers=pat), 422)
    assert "site name" in error["message"] or "name" in error["message"]


def test_unicode_in_providers_scopes_and_urls_is_refused_clearly(
    api: str, http: httpx.Client, pat: dict[str, str]
) -> None:
    connections = f"{api}/sites/my-site/connections"
    error = refused(http.post(connections, json={"provider": "gïthub"}, headers=pat), 404)
    assert "github" in error["message"], "the error should list the known providers"
    error = refused(
        http.post(connections, json={"provider": "github", "scopes": ["repo", "ré"]}, headers=pat),
        422,
    )
    assert "scope" in error["message"]
    refused(
        http.patch(
            f"{api}/sites/my-site", json={"deploy_hook_url": "javascript:alert(1)"}, headers=pat
        ),
        422,
    )
    refused(http.get(f"{connections}/gïthub", headers=pat), 404)


def test_huge_scope_lists_are_refused(api: str, http: httpx.Client, pat: dict[str, str]) -> None:
    connections = f"{api}/sites/my-site/connections"
    for scopes in (
        [f"scope{i}" for i in range(101)],
        ["repo"] * 100_000,
        ["x" * 201],
        ["a", ""],
        ["has space"],
    ):
        body = {"provider": "github", "scopes": scopes}
        refused(http.post(connections, json=body, headers=pat), 413, 422)
    started = http.post(
        connections, json={"provider": "github", "scopes": ["repo"] * 3}, headers=pat
    )
    assert started.status_code == 200, "repeated scopes are folded, not refused"


@pytest.mark.parametrize(
    "path",
    [
        "/sites/..%2F..%2Fetc%2Fpasswd",
        "/sites/..%2F..%2Fetc",
        "/sites/%2e%2e/%2e%2e/etc/passwd",
        "/sites/..",
        "/sites/%00",
        "/sites/my-site%00",
        "/sites/my-site%2F..%2F..%2Fother",
        "/sites/my-site/connections/..%2F..%2F..%2Fsecrets",
        "/sites/my-site/connections/%00",
        "/sites/%252e%252e%252f",
        "/sites/" + "a" * 5000,
    ],
)
def test_path_tricks_in_site_and_provider_names_are_a_clear_4xx(
    api: str, http: httpx.Client, pat: dict[str, str], path: str
) -> None:
    answer = http.get(api + path, headers=pat)
    refused(answer, 404, 422)
    assert "root:" not in answer.text
    deleted = http.delete(api + path, headers=pat)
    refused(deleted, 404, 405, 422)
    assert http.get(f"{api}/sites/my-site", headers=pat).status_code == 200


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=100000000000000000000000", "limit=abc", "before=-1", "before=1e9"],
)
def test_bad_paging_of_the_audit_log_is_a_422(
    api: str, http: httpx.Client, pat: dict[str, str], query: str
) -> None:
    refused(http.get(f"{api}/sites/my-site/events?{query}", headers=pat), 422)


@pytest.mark.parametrize("ttl", [True, False, "900", 1.5, 0, -1, 86_401, 10**30, None])
def test_a_function_token_lifetime_must_be_a_whole_number_of_seconds_in_range(
    api: str, http: httpx.Client, pat: dict[str, str], ttl: object
) -> None:
    enabled = http.post(f"{api}/sites/my-site/api-auth", headers=pat)
    site_token = {"Authorization": f"Bearer {enabled.json()['token']}"}
    answer = http.post(f"{api}/function-tokens", json={"ttl_seconds": ttl}, headers=site_token)
    refused(answer, 422)
