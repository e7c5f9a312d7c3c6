"""A site with API Authentication on, on a test server (in-process or live): connect
providers through the emulator's consent, read its secrets over HTTP, drive the emulator's
faults and stats."""

from __future__ import annotations

from typing import Any

import httpx

from apiauth.domain import connect_flow, connections, sites
from apiauth.domain.members import MemberView, create_member, create_personal_token
from tests.consent import consent
from tests.in_process import InProcessServer
from tests.servers import LiveServer


class Site:
    """A site with API Authentication on, seen by its owner and by its functions."""

    def __init__(self, server: LiveServer | InProcessServer, http: httpx.Client) -> None:
        self.server = server
        self.broker = server.broker
        self.http = http
        self.owner: MemberView = create_member(
            server.broker, "owner@example.com", "correct horse battery"
        )
        sites.create_site(server.broker, self.owner, "my-site")
        self.token = sites.enable_api_auth(server.broker, self.owner, "my-site")
        self.pat = create_personal_token(server.broker, self.owner, "tests")

    def connect(self, provider: str) -> None:
        start = connect_flow.start_connection(self.server.broker, self.owner, "my-site", provider)
        assert consent(self.http, start.authorize_url).status_code == 200

    def read(self, provider: str) -> dict[str, Any]:
        response = self.http.get(
            f"{self.server.url}/api/v1/secrets",
            headers={"Authorization": f"Bearer {self.token}"},
        )
        assert response.status_code == 200, response.text
        secret: dict[str, Any] = response.json()[provider]
        return secret

    def connection(self, provider: str) -> connections.ConnectionView:
        return connections.get_connection(self.server.broker, self.owner, "my-site", provider)

    def stats(self, provider: str) -> dict[str, int]:
        answer = self.http.get(f"{self.server.url}/_emulator/_admin/stats").json()
        stats: dict[str, int] = answer[provider]
        return stats

    def fault(self, provider: str, endpoint: str, times: int = 1, **fault: Any) -> None:
        queued = self.http.post(
            f"{self.server.url}/_emulator/_admin/faults",
            json={"provider": provider, "endpoint": endpoint, "times": times, **fault},
        )
        assert queued.status_code == 200, queued.text

    def accepted(self, provider: str, bearer: str) -> bool:
        url = self.server.broker.catalog[provider].userinfo_url
        assert url is not None
        instance = self.read(provider)["extra"].get("instance_url", "")
        url = url.replace("{instance_url}", instance)
        return self.http.get(url, headers={"Authorization": f"Bearer {bearer}"}).status_code == 200
