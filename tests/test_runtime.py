"""Two brokers in one process (tests, an application embedding apiauth) share nothing: each
has its own runtime - remembered tokens and answers, decrypted secrets, the audit buffer,
the wake-ups of its workers - and no module global joins them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from apiauth.config import Settings
from apiauth.domain import audit, sites
from apiauth.domain.broker import Broker
from apiauth.domain.members import MemberView, create_member
from apiauth.errors import AuthenticationFailed
from tests.servers import open_test_broker

pytestmark = pytest.mark.fast


class Opened:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.owner: MemberView = create_member(broker, "owner@example.com", "correct horse battery")
        sites.create_site(broker, self.owner, "my-site", deploy_hook_url="http://127.0.0.1:9/h")
        self.token = sites.enable_api_auth(broker, self.owner, "my-site")
        self.woken = 0

        def wake() -> None:
            self.woken += 1

        broker.runtime.delivery_wakeups.subscribe(wake)


@pytest.fixture
def two_brokers(tmp_path: Path) -> Iterator[tuple[Opened, Opened]]:
    opened = []
    for name in ("a", "b"):
        settings = Settings(
            data_dir=tmp_path / name,
            database_url=f"sqlite:///{tmp_path / name / 'apiauth.db'}",
            allow_loopback_urls=True,
        )
        opened.append(Opened(open_test_broker(settings)))
    yield opened[0], opened[1]
    for each in opened:
        each.broker.close()


def test_a_token_one_broker_remembers_is_not_accepted_by_another(
    two_brokers: tuple[Opened, Opened],
) -> None:
    a, b = two_brokers

    assert sites.authenticate_site_token(a.broker, a.token).site_name == "my-site"

    with pytest.raises(AuthenticationFailed):
        sites.authenticate_site_token(b.broker, a.token)


def test_secrets_reads_are_audited_by_the_broker_that_served_them(
    two_brokers: tuple[Opened, Opened],
) -> None:
    a, b = two_brokers
    caller = sites.authenticate_site_token(a.broker, a.token)

    audit.record_secrets_read(a.broker, caller, [], ip="127.0.0.1")

    def reads(opened: Opened) -> int:
        page = audit.list_events(opened.broker, opened.owner, "my-site")
        return sum(1 for event in page.events if event.kind == "secrets.read")

    assert (reads(a), reads(b)) == (1, 0)


def test_a_delivery_enqueued_by_one_broker_wakes_only_its_own_workers(
    two_brokers: tuple[Opened, Opened],
) -> None:
    a, b = two_brokers
    a.woken = b.woken = 0

    sites.enable_api_auth(a.broker, a.owner, "my-site")  # fires the deploy hook

    assert (a.woken, b.woken) == (1, 0)
