"""Bad input, generated: Schemathesis reads `/openapi.json` of a live server and sends every
operation valid and invalid requests, with a personal access token, with a site token, and with
none. Every answer must be documented (status, content type, headers, body schema), valid
invalid input must be refused with a 4xx, and nothing may be a 5xx. (Schemathesis's check that
schema-valid input is accepted is left out: input can be valid by the schema and still name
things that do not exist, such as an unknown provider or OAuth state, and a 4xx is right then.)

`make test` sends a few examples per operation, mode and caller; a longer run:

    SCHEMATHESIS_EXAMPLES=500 .venv/bin/pytest tests/test_schemathesis.py

The number of requests sent is printed at the end of the module (run with `-s` to see it).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import positive_data_acceptance

from apiauth.domain import sites
from apiauth.domain.members import create_member, create_personal_token
from tests.servers import LiveServer, running_server
from tests.stored_connections import store_connection

EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "8"))
SITE = "fuzzed"
SITE_TOKEN_PATHS = ("/api/v1/secrets", "/api/v1/function-tokens")
# Adding a provider by URL fetches that URL: generated URLs would send the server to random
# hosts. Its bad input is tested in test_providers_by_url.py and test_discovery.py instead.
NOT_FUZZED = frozenset({"POST /api/v1/providers"})

sent: Counter[str] = Counter()


class Fuzzed:
    def __init__(self, server: LiveServer) -> None:
        self.server = server
        broker = server.broker
        owner = create_member(broker, "owner@example.com", None)
        self.pat = create_personal_token(broker, owner, "schemathesis")
        view = sites.create_site(broker, owner, SITE)
        store_connection(broker, view.id, "github", "gho_fuzzed_token_value")
        self.site_token = sites.enable_api_auth(broker, owner, SITE)
        schema_json = httpx.get(server.url + "/openapi.json").json()
        self.schema = schemathesis.openapi.from_dict(schema_json)
        # The test sends its own credentials, and unknown query parameters are ignored by
        # design (as in most HTTP APIs), so neither is a mutation that must be refused.
        self.schema.config.generation.update(
            allow_extra_parameters=False, with_security_parameters=False
        )
        self.session = requests.Session()

    def headers_for(self, caller: str, path: str) -> dict[str, str]:
        if caller == "anonymous":
            return {}
        site_path = path in SITE_TOKEN_PATHS or path.startswith("/api/v1/proxy/")
        token = self.site_token if site_path else self.pat
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    tmp: Path = tmp_path_factory.mktemp("schemathesis")
    with running_server(tmp, f"sqlite:///{tmp / 'apiauth.db'}") as server:
        yield Fuzzed(server)
        server.broker.runtime.audit_buffer  # noqa: B018 - the server ran; nothing to flush
    total = sum(sent.values())
    print(f"\nschemathesis: {total} requests sent: {dict(sorted(sent.items()))}")


def fuzz(fuzzed: Fuzzed, operation: Any, caller: str, mode: GenerationMode) -> None:
    """Send EXAMPLES generated requests to one operation and check every answer."""
    headers = fuzzed.headers_for(caller, operation.path)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        sent[f"{caller}/{mode.value}"] += 1
        case.call_and_validate(
            base_url=fuzzed.server.url,
            session=fuzzed.session,
            headers=headers,
            excluded_checks=[positive_data_acceptance],
        )

    check()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("caller", ["member", "site", "anonymous"])
def test_every_operation_answers_as_documented(
    fuzzed: Fuzzed, caller: str, mode: GenerationMode
) -> None:
    failures: dict[str, str] = {}
    for result in fuzzed.schema.get_all_operations():
        operation = result.ok()
        if operation.label in NOT_FUZZED:
            continue
        try:
            fuzz(fuzzed, operation, caller, mode)
        except Unsatisfiable:
            # Nothing to make invalid: an operation without parameters or body.
            assert mode is GenerationMode.NEGATIVE, operation.label
        except (AssertionError, FailureGroup) as exc:
            failures[operation.label] = str(exc)[:3000]
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
