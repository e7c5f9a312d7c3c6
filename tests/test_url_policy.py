"""SSRF policy: deploy hook, webhook and custom provider URLs may not point the server at
loopback, private, link-local, multicast or reserved addresses, checked when entered and
again before every call."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from apiauth.config import Settings
from apiauth.domain import deliveries, sites
from apiauth.domain.broker import Broker
from apiauth.domain.members import MemberView, create_personal_token
from apiauth.errors import UrlNotAllowed
from apiauth.providers import CatalogError
from apiauth.store.models import Delivery
from apiauth.url_policy import UrlPolicy, check_url, pinned_request
from tests.servers import HookReceiver, LiveServer, open_test_broker

STRICT = UrlPolicy()
DEMO = UrlPolicy(allow_loopback=True)

pytestmark = pytest.mark.fast


def resolving_to(*addresses: str) -> Any:
    def resolve(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        family = socket.AF_INET6 if ":" in addresses[0] else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    return resolve


def unresolvable(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://127.0.0.1/hook", "loopback"),
        ("https://[::1]/hook", "loopback"),
        ("https://2130706433/hook", "loopback"),  # 127.0.0.1 as one number
        ("https://10.1.2.3/hook", "private"),
        ("https://192.168.0.10/hook", "private"),
        ("https://[fd00::1]/hook", "private"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://[fe80::1]/hook", "link-local"),
        ("https://224.0.0.1/hook", "multicast"),
        ("https://240.0.0.1/hook", "reserved"),
        ("https://0.0.0.0/hook", "unspecified"),
        ("https://100.64.0.1/hook", "not public"),
        ("https://[::ffff:127.0.0.1]/hook", "loopback"),
    ],
)
def test_forbidden_addresses_are_refused_with_the_reason(url: str, why: str) -> None:
    with pytest.raises(UrlNotAllowed, match=why):
        check_url(url, STRICT, "deploy hook URL")


def test_every_address_a_name_resolves_to_is_checked() -> None:
    mixed = resolving_to("93.184.215.14", "10.0.0.7")
    with pytest.raises(UrlNotAllowed, match="private"):
        check_url("https://hooks.example.com/x", STRICT, "webhook URL", resolve=mixed)
    public = resolving_to("93.184.215.14")
    checked = check_url("https://hooks.example.com/x", STRICT, "webhook URL", resolve=public)
    assert [str(a) for a in checked.addresses] == ["93.184.215.14"]


def test_plain_http_only_to_loopback_and_only_when_loopback_is_allowed() -> None:
    public = resolving_to("93.184.215.14")
    with pytest.raises(UrlNotAllowed, match="https"):
        check_url("http://hooks.example.com/x", DEMO, "deploy hook URL", resolve=public)
    with pytest.raises(UrlNotAllowed, match="loopback"):
        check_url("http://127.0.0.1:9/hook", STRICT, "deploy hook URL")
    assert check_url("http://127.0.0.1:9/hook", DEMO, "deploy hook URL").addresses
    private = UrlPolicy(allow_private=True)
    assert check_url("https://10.0.0.1/x", private, "deploy hook URL")
    with pytest.raises(UrlNotAllowed, match="https"):
        check_url("http://10.0.0.1/x", private, "deploy hook URL")


def test_a_name_that_does_not_resolve_passes_at_input_but_not_before_a_call() -> None:
    url = "https://not-yet.example/hook"
    assert check_url(url, STRICT, "webhook URL", resolve=unresolvable).addresses == ()
    with pytest.raises(UrlNotAllowed, match="does not resolve"):
        check_url(url, STRICT, "webhook URL", require_resolution=True, resolve=unresolvable)


def test_a_call_goes_to_the_checked_address_with_the_host_name_kept_for_tls() -> None:
    checked = check_url(
        "https://user:pw@hooks.example.com:8443/p?q=1",
        STRICT,
        "webhook URL",
        resolve=resolving_to("93.184.215.14"),
    )
    url, headers, extensions = pinned_request(checked)
    assert url == "https://user:pw@93.184.215.14:8443/p?q=1"
    assert headers == {"Host": "hooks.example.com:8443"}
    assert extensions == {"sni_hostname": "hooks.example.com"}


def test_site_urls_are_checked_when_entered(
    live: LiveServer, owner: MemberView, http: httpx.Client
) -> None:
    api = f"{live.url}/api/v1"
    pat = {"Authorization": f"Bearer {create_personal_token(live.broker, owner, 't')}"}
    for url in ("https://169.254.169.254/latest", "https://10.0.0.1/hook", "ftp://x/y"):
        answer = http.post(f"{api}/sites", json={"name": "s1", "deploy_hook_url": url}, headers=pat)
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["code"] in ("url_not_allowed", "invalid_input")
    made = http.post(f"{api}/sites", json={"name": "s1"}, headers=pat)
    assert made.status_code == 201
    patched = http.patch(
        f"{api}/sites/s1", json={"webhook_url": "https://[fe80::1]/hook"}, headers=pat
    )
    assert patched.status_code == 422
    assert "link-local" in patched.json()["error"]["message"]


def test_deliveries_are_checked_again_before_each_post_and_never_follow_redirects(
    broker: Broker, owner: MemberView, hook_receiver: HookReceiver
) -> None:
    assert broker.http.follow_redirects is False
    sites.create_site(broker, owner, "hooked", deploy_hook_url=hook_receiver.url)
    # What was allowed when entered is not any more (the DNS answer or the policy changed).
    broker.url_policy = STRICT
    sites.enable_api_auth(broker, owner, "hooked")
    deadline = time.monotonic() + 10
    row = None
    while time.monotonic() < deadline:
        with broker.sessions() as db:
            row = db.scalar(select(Delivery))
        if row is not None and row.last_error:
            break
        time.sleep(0.05)
    assert row is not None
    assert row.last_error is not None
    assert row.last_error.startswith("not sent:")
    assert "loopback" in row.last_error
    assert row.delivered_at is None
    assert hook_receiver.received == []
    assert deliveries.MAX_ATTEMPTS > 1  # retried later, in case the answer changes back


ACME = """
[providers.acme]
display_name = "Acme"
authorization_url = "https://auth.acme.example/authorize"
token_url = "{token_url}"
token_auth_method = "client_secret_post"
scopes = [{{ name = "read", description = "Read", default = true }}]
"""


def test_custom_provider_urls_are_checked_at_start(tmp_path: Path) -> None:
    providers = tmp_path / "providers.toml"

    def start(token_url: str, **settings: Any) -> Broker:
        providers.write_text(ACME.format(token_url=token_url))
        return open_test_broker(
            Settings(data_dir=tmp_path / "data", providers_file=providers, **settings)
        )

    with pytest.raises(CatalogError, match=r"provider 'acme': field 'token_url'.*link-local"):
        start("https://169.254.169.254/token")
    with pytest.raises(CatalogError, match=r"field 'token_url'.*loopback"):
        start("http://127.0.0.1:9/token")
    start("http://127.0.0.1:9/token", allow_loopback_urls=True).close()
    start("https://auth.acme.example/token").close()  # does not resolve (yet): accepted
    # In demo mode a custom provider is called where its URLs point (SPEC §4)...
    with pytest.raises(CatalogError, match=r"field 'token_url'.*link-local"):
        start("https://169.254.169.254/token", emulator_url="http://127.0.0.1:9/_emulator")
    # ... unless it asks for the emulator.
    providers.write_text(
        ACME.format(token_url="https://169.254.169.254/token") + "emulate = true\n"
    )
    open_test_broker(
        Settings(
            data_dir=tmp_path / "data",
            providers_file=providers,
            emulator_url="http://127.0.0.1:9/_emulator",
        )
    ).close()
