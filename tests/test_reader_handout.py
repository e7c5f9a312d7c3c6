"""What a reader hands out while someone else refreshes the connection: the token it has,
at once, while that token is usable for a while yet; the refreshed one, after waiting, when
the token it has expires within `refresh.USABLE_FOR` (the caller could not use it in time).
In-process, with an injected clock and an emulated Box whose token endpoint is slow."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

import httpx
import pytest

from apiauth.domain import connections
from apiauth.domain.refresh import USABLE_FOR
from tests.in_process import InProcessServer
from tests.live_site import Site

pytestmark = pytest.mark.fast

SLOW = 1.5  # seconds the emulated token endpoint takes to answer the refresh


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(0.02)


def slow_refresh_under_way(site: Site) -> threading.Thread:
    """A person pressed Refresh; the provider takes `SLOW` seconds to answer."""
    site.fault("box", "token", delay_seconds=SLOW)
    person = threading.Thread(
        target=connections.refresh_site_connection,
        args=(site.broker, site.owner, "my-site", "box"),
    )
    person.start()
    wait_until(lambda: site.stats("box")["faults_served"] == 1)
    return person


def box_expiring_in(
    live: InProcessServer, http: httpx.Client, seconds_left: float
) -> tuple[Site, dict[str, object]]:
    """A site with Box connected, its token read, and the clock moved to `seconds_left`
    before that token expires (inside the refresh margin: the connection is due)."""
    site = Site(live, http)
    site.connect("box")
    first = site.read("box")
    expires_at = datetime.fromisoformat(str(first["expires_at"]))
    live.clock.now = expires_at - timedelta(seconds=seconds_left)
    return site, first


@pytest.mark.parametrize("seconds_left", [30.0, 10.0])
def test_a_usable_token_is_handed_out_at_once_while_another_refresh_runs(
    live: InProcessServer, http: httpx.Client, seconds_left: float
) -> None:
    site, first = box_expiring_in(live, http, seconds_left)
    person = slow_refresh_under_way(site)
    during = site.read("box")
    refresh_still_running = person.is_alive()
    person.join()
    assert refresh_still_running, "the reader waited for the refresh"
    assert during["bearer_token"] == first["bearer_token"]
    assert site.read("box")["bearer_token"] != first["bearer_token"]


@pytest.mark.parametrize("seconds_left", [USABLE_FOR.total_seconds() / 2, 0.1])
def test_a_token_about_to_expire_is_not_handed_out_while_another_refresh_runs(
    live: InProcessServer, http: httpx.Client, seconds_left: float
) -> None:
    site, first = box_expiring_in(live, http, seconds_left)
    person = slow_refresh_under_way(site)
    during = site.read("box")
    person.join()
    assert during["bearer_token"] != first["bearer_token"]
    assert during["is_logged_in"] is True
    assert site.accepted("box", during["bearer_token"])
    assert site.stats("box")["refresh_token_reuse"] == 0
