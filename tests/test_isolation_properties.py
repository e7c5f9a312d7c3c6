"""Who may read what, as properties over random teams, sites, members and tokens: a site or
function token reads exactly its own site's providers, a member sees only their team's sites
(404 for every other one, on every management endpoint), and every kind of bad token gets the
same 401, in about the same time. Against a live server over real HTTP, on SQLite and
PostgreSQL.

Each test reuses one server and database for all its examples, with unique names per example.
`ISOLATION_EXAMPLES=200 .venv/bin/pytest tests/test_isolation_properties.py` runs longer.
"""

from __future__ import annotations

import itertools
import os
import random
import secrets
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apiauth.domain import sites
from apiauth.domain.broker import Broker
from apiauth.domain.members import MemberView, create_member, create_personal_token
from apiauth.domain.token_format import TokenKind, generate_token
from apiauth.providers import AuthMode
from tests.servers import LiveServer
from tests.stored_connections import store_connection

pytestmark = pytest.mark.fast

PROVIDERS = ("github", "salesforce", "spotify", "stripe", "box", "contentful", "openai", "twilio")
# Key-based ones (SPEC §7): their credential is read from `api_key` / `password`.
MODES: dict[str, AuthMode] = {"openai": "api_key", "twilio": "basic"}
EXAMPLES = int(os.environ.get("ISOLATION_EXAMPLES", "15"))

examples = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_unique = itertools.count()


def unique() -> str:
    """A name part no other example of this run uses (site names are unique per server)."""
    return f"x{next(_unique)}{secrets.token_hex(2)}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def credential(secret: dict[str, Any]) -> str | None:
    """What a secret hands out, whatever its auth mode: the token, the key or the password."""
    value: str | None = secret["bearer_token"] or secret["api_key"] or secret["password"]
    return value


@dataclass(frozen=True)
class BuiltSite:
    name: str
    team: int
    token: str
    providers: dict[str, str]  # provider -> the access token stored for it


@dataclass
class World:
    members: list[MemberView]  # one owner per team, by team index
    pats: list[str]
    sites: list[BuiltSite]


def build_world(broker: Broker, layout: list[list[frozenset[str]]]) -> World:
    """`layout[team][site]` is the set of providers connected on that site."""
    tag = unique()
    world = World([], [], [])
    for team_index, team_sites in enumerate(layout):
        owner = create_member(
            broker,
            f"{tag}-owner{team_index}@example.com",
            None,
            team_name=f"{tag}-team{team_index}",
        )
        world.members.append(owner)
        world.pats.append(create_personal_token(broker, owner, "isolation"))
        for site_index, providers in enumerate(team_sites):
            name = f"{tag}-t{team_index}-s{site_index}"
            view = sites.create_site(broker, owner, name)
            token = sites.enable_api_auth(broker, owner, name)
            stored = {}
            for provider in sorted(providers):
                access = f"at-{name}-{provider}-{secrets.token_hex(8)}"
                store_connection(
                    broker, view.id, provider, access, auth_mode=MODES.get(provider, "oauth2")
                )
                stored[provider] = access
            world.sites.append(BuiltSite(name, team_index, token, stored))
    return world


provider_sets = st.frozensets(st.sampled_from(PROVIDERS), max_size=len(PROVIDERS))
layouts = st.lists(st.lists(provider_sets, min_size=1, max_size=3), min_size=2, max_size=3)


def test_a_site_or_function_token_reads_exactly_its_own_sites_providers(
    live: LiveServer, http: httpx.Client
) -> None:
    checked = 0

    @examples
    @given(layout=layouts, data=st.data())
    def check(layout: list[list[frozenset[str]]], data: st.DataObject) -> None:
        nonlocal checked
        world = build_world(live.broker, layout)
        for site in world.sites:
            answer = http.get(f"{live.url}/api/v1/secrets", headers=bearer(site.token))
            assert answer.status_code == 200, answer.text
            got = {name: credential(secret) for name, secret in answer.json().items()}
            assert got == site.providers, f"site token of {site.name}"

            subset = data.draw(st.none() | st.lists(st.sampled_from(PROVIDERS), min_size=1))
            body: dict[str, Any] = {"ttl_seconds": 60}
            if subset is not None:
                body["providers"] = subset
            minted = http.post(
                f"{live.url}/api/v1/function-tokens", json=body, headers=bearer(site.token)
            )
            assert minted.status_code == 201, minted.text
            function_token = minted.json()["token"]
            answer = http.get(f"{live.url}/api/v1/secrets", headers=bearer(function_token))
            assert answer.status_code == 200, answer.text
            allowed = set(PROVIDERS) if subset is None else set(subset)
            expected = {p: t for p, t in site.providers.items() if p in allowed}
            got = {name: credential(secret) for name, secret in answer.json().items()}
            assert got == expected, f"function token of {site.name} limited to {subset}"
            checked += 1

    check()
    assert checked >= EXAMPLES


def _management_calls(site: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    """Every management endpoint that names a site, with a body it would accept."""
    base = f"/api/v1/sites/{site}"
    return [
        ("GET", base, None),
        ("PATCH", base, {"deploy_hook_url": "https://example.com/hook"}),
        ("POST", f"{base}/api-auth", None),
        ("POST", f"{base}/api-auth/rotate", None),
        ("GET", f"{base}/connections", None),
        ("POST", f"{base}/connections", {"provider": "github"}),
        ("GET", f"{base}/connections/github", None),
        ("POST", f"{base}/connections/github/refresh", None),
        ("GET", f"{base}/events", None),
        ("DELETE", f"{base}/connections/github", None),
        ("DELETE", f"{base}/api-auth", None),
        ("DELETE", base, None),
    ]


def test_a_member_reads_only_their_own_teams_sites(live: LiveServer, http: httpx.Client) -> None:
    checked = 0

    @examples
    @given(layout=layouts, data=st.data())
    def check(layout: list[list[frozenset[str]]], data: st.DataObject) -> None:
        nonlocal checked
        broker = live.broker
        world = build_world(broker, layout)
        team = data.draw(st.integers(0, len(layout) - 1), label="team of the caller")
        # A plain member (not the owner) of that team, with a personal token of their own.
        member = create_member(
            broker,
            f"{unique()}@example.com",
            None,
            role="member",
            team_name=world.members[team].team_name,
        )
        headers = bearer(create_personal_token(broker, member, "probe"))

        listed = http.get(f"{live.url}/api/v1/sites", headers=headers)
        assert listed.status_code == 200
        own = {s.name for s in world.sites if s.team == team}
        assert {s["name"] for s in listed.json()} == own

        others = [s for s in world.sites if s.team != team]
        target = data.draw(st.sampled_from(others), label="another team's site")
        missing = f"{unique()}-nowhere"
        for method, path, body in _management_calls(target.name):
            answer = http.request(method, live.url + path, json=body, headers=headers)
            assert answer.status_code == 404, f"{method} {path}: {answer.status_code}"
            unknown = http.request(
                method, live.url + path.replace(target.name, missing), json=body, headers=headers
            )
            assert unknown.status_code == 404
            # Nothing tells another team's site from one that does not exist.
            assert answer.json() == _renamed(unknown.json(), missing, target.name)

        # Nothing changed on the other team's site: its own token still reads its providers.
        still = http.get(f"{live.url}/api/v1/secrets", headers=bearer(target.token))
        assert still.status_code == 200
        assert {k: credential(v) for k, v in still.json().items()} == target.providers
        checked += 1

    check()
    assert checked >= EXAMPLES


def _renamed(body: Any, old: str, new: str) -> Any:
    if isinstance(body, dict):
        return {k: _renamed(v, old, new) for k, v in body.items()}
    if isinstance(body, str):
        return body.replace(old, new)
    return body


# --------------------------------------------------------------------------- bad tokens


def _broken_checksum(token: str) -> str:
    last = token[-1]
    return token[:-1] + ("A" if last != "A" else "B")


MUTATIONS: dict[str, Callable[[str], str]] = {
    "truncated": lambda t: t[:-1],
    "checksum broken": _broken_checksum,
    "other prefix (personal)": lambda t: "apiauth_pat_" + t.split("_", 2)[2],
    "other prefix (session)": lambda t: "apiauth_sess_" + t.split("_", 2)[2],
    "foreign prefix": lambda t: "ghp_" + t.split("_", 2)[2],
    "extended": lambda t: t + "0",
    "upper-cased": lambda t: t.upper(),
}

header_safe_text = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=120
)


@dataclass
class BadTokens:
    revoked: str  # API Authentication disabled
    rotated: str  # replaced by a rotation
    expired: str  # a function token past its TTL
    orphaned: str  # a function token whose site token was rotated
    valid: str


def bad_tokens(live: LiveServer, http: httpx.Client) -> BadTokens:
    broker = live.broker
    owner = create_member(broker, f"{unique()}@example.com", None, team_name=unique())
    tag = unique()
    revoked_site = f"{tag}-revoked"
    sites.create_site(broker, owner, revoked_site)
    revoked = sites.enable_api_auth(broker, owner, revoked_site)
    sites.disable_api_auth(broker, owner, revoked_site)

    site = f"{tag}-rotated"
    view = sites.create_site(broker, owner, site)
    store_connection(broker, view.id, "github", f"at-{tag}")
    rotated = sites.enable_api_auth(broker, owner, site)
    orphaned = _mint(live, http, rotated, 600)
    valid = sites.rotate_site_token(broker, owner, site)
    expired = _mint(live, http, valid, 1)
    real_clock = broker.clock
    broker.clock = lambda: real_clock() + timedelta(seconds=5)
    return BadTokens(revoked, rotated, expired, orphaned, valid)


def _mint(live: LiveServer, http: httpx.Client, site_token: str, ttl: int) -> str:
    minted = http.post(
        f"{live.url}/api/v1/function-tokens", json={"ttl_seconds": ttl}, headers=bearer(site_token)
    )
    assert minted.status_code == 201, minted.text
    token: str = minted.json()["token"]
    return token


def test_every_bad_token_gets_the_same_401(live: LiveServer, http: httpx.Client) -> None:
    tokens = bad_tokens(live, http)
    assert http.get(f"{live.url}/api/v1/secrets", headers=bearer(tokens.valid)).status_code == 200
    reference = http.get(f"{live.url}/api/v1/secrets", headers=bearer(tokens.revoked))
    assert reference.status_code == 401
    shape = reference.json()
    assert set(shape) == {"error"}
    assert set(shape["error"]) == {"code", "message"}
    assert shape["error"]["code"] == "unauthorized"
    named = {
        "revoked": tokens.revoked,
        "rotated": tokens.rotated,
        "expired": tokens.expired,
        "orphaned function token": tokens.orphaned,
        "random well-formed site token": generate_token(TokenKind.SITE),
        "random well-formed function token": generate_token(TokenKind.FUNCTION),
        "a personal token": generate_token(TokenKind.PERSONAL),
        **{what: mutate(tokens.valid) for what, mutate in MUTATIONS.items()},
    }
    checked = 0

    def same_answer(token: str, what: str) -> None:
        for method, path in (("GET", "/api/v1/secrets"), ("POST", "/api/v1/function-tokens")):
            answer = http.request(method, live.url + path, headers=bearer(token), json={})
            assert answer.status_code == 401, f"{what} on {path}: {answer.status_code}"
            assert answer.json() == shape, f"{what} on {path} answers differently"
            assert answer.headers.get("www-authenticate") == "Bearer"

    for what, token in named.items():
        same_answer(token, what)
        checked += 1

    @examples
    @given(
        token=st.one_of(
            header_safe_text,
            st.sampled_from(list(named.values())).flatmap(
                lambda t: st.integers(1, len(t) - 1).map(lambda n: t[:n])
            ),
            st.sampled_from([tokens.valid]).flatmap(
                lambda t: st.integers(0, len(t) - 1).flatmap(
                    lambda i: header_safe_text.map(lambda c: t[:i] + c[0] + t[i + 1 :])
                )
            ),
        )
    )
    def any_other_string(token: str) -> None:
        nonlocal checked
        if token == tokens.valid:
            return
        same_answer(token, "generated")
        checked += 1

    any_other_string()
    assert checked >= len(named) + EXAMPLES // 2


def _medians_ms(
    http: httpx.Client, url: str, kinds: dict[str, str], rounds: int
) -> dict[str, float]:
    """Round-robin over the kinds, in a shuffled order each round, so that whatever else the
    machine does slows all alike and none always follows another."""
    times: dict[str, list[float]] = {what: [] for what in kinds}
    order = list(kinds)
    shuffler = random.Random(1)
    for _ in range(rounds):
        shuffler.shuffle(order)
        for what in order:
            started = time.perf_counter()
            answer = http.get(url, headers=bearer(kinds[what]))
            times[what].append((time.perf_counter() - started) * 1000)
            assert answer.status_code == 401
    return {what: statistics.median(values) for what, values in times.items()}


# A kind far slower than the others is so in every measurement; a loaded machine (other
# test processes, other sessions) slows one measurement by chance, hardly three in a row.
MEASUREMENTS = 3


@pytest.mark.over_http
def test_bad_tokens_are_refused_in_about_the_same_time(
    live: LiveServer, http: httpx.Client
) -> None:
    """Medians of 40 interleaved requests each: a revoked token (found by its hash, then
    refused), a random well-formed one (not found) and a malformed one (refused before any
    lookup). A generous bound (3 times, plus 5 ms for a loaded machine), which one of up to
    three measurements must meet: this guards against a lookup that is far slower for one
    kind, not against microsecond differences, which loopback HTTP noise hides anyway."""
    tokens = bad_tokens(live, http)
    url = f"{live.url}/api/v1/secrets"
    kinds = {
        "revoked": tokens.revoked,
        "random well-formed": generate_token(TokenKind.SITE),
        "malformed": _broken_checksum(tokens.valid),
    }
    _medians_ms(http, url, kinds, 5)  # warm up connections and caches
    measured = []
    for _ in range(MEASUREMENTS):
        medians = _medians_ms(http, url, kinds, 40)
        measured.append(medians)
        if max(medians.values()) < 3 * min(medians.values()) + 5:
            return
    pytest.fail(f"median times differ too much in every measurement (ms): {measured}")
