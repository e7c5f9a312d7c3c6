"""`apiauth keys rotate`: every record re-wrapped under a new master key, while a running
server keeps reading and writing, and an interrupted rotation finishes when run again."""

from __future__ import annotations

import httpx
import pytest

from apiauth.domain import connect_flow, key_rotation, secrets_read, sites
from apiauth.domain.members import create_member
from apiauth.vault import KeyFile
from tests.consent import consent
from tests.servers import LiveServer

pytestmark = pytest.mark.fast


def test_rotation_rewraps_every_record_and_the_running_server_follows(
    live: LiveServer, http: httpx.Client
) -> None:
    broker = live.broker
    owner = create_member(broker, "owner@example.com", "correct horse battery")
    sites.create_site(broker, owner, "my-site")
    token = sites.enable_api_auth(broker, owner, "my-site")
    for provider in ("github", "box"):
        start = connect_flow.start_connection(broker, owner, "my-site", provider)
        consent(http, start.authorize_url)
    connect_flow.start_connection(broker, owner, "my-site", "spotify")  # a PKCE verifier at rest
    before = http.get(f"{live.url}/api/v1/secrets", headers={"Authorization": f"Bearer {token}"})

    key_file = KeyFile(broker.settings.key_file)
    old = key_file.load().active.id
    new = key_file.add_new_key()
    result = key_rotation.rewrap_all(broker)
    assert result.rewrapped == key_rotation.count_encrypted_records(broker) == 3
    assert key_rotation.records_by_key(broker) == {new.id: 3}
    key_file.keep_only(new.id)
    assert [k.id for k in key_file.load().keys] == [new.id]
    assert old != new.id

    after = http.get(f"{live.url}/api/v1/secrets", headers={"Authorization": f"Bearer {token}"})
    assert after.status_code == 200
    assert after.json() == before.json()
    # What the server seals from now on is under the new key too.
    start = connect_flow.start_connection(broker, owner, "my-site", "stripe")
    consent(http, start.authorize_url)
    assert set(key_rotation.records_by_key(broker)) == {new.id}


def test_an_interrupted_rotation_finishes_when_run_again(
    live: LiveServer, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = live.broker
    owner = create_member(broker, "owner@example.com", "correct horse battery")
    sites.create_site(broker, owner, "my-site")
    site_token = sites.enable_api_auth(broker, owner, "my-site")
    for provider in ("github", "box", "stripe", "contentful"):
        start = connect_flow.start_connection(broker, owner, "my-site", provider)
        consent(http, start.authorize_url)
    new = KeyFile(broker.settings.key_file).add_new_key()
    monkeypatch.setattr(key_rotation, "BATCH", 2)

    def crash_after_first_batch(count: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        key_rotation.rewrap_all(broker, crash_after_first_batch)
    halfway = key_rotation.records_by_key(broker)
    assert halfway.get(new.id) == 2
    assert sum(halfway.values()) == 4
    caller = sites.authenticate_site_token(broker, site_token)
    assert all(view.is_logged_in for view in secrets_read.read_secrets(broker, caller).values())
    key_rotation.rewrap_all(broker)
    assert key_rotation.records_by_key(broker) == {new.id: 4}
