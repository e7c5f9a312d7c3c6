"""The README's count of the built-in catalog, by auth mode, is the catalog's (SPEC §7: the
note of each round gives the count by mode; this is where it is counted)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from apiauth.providers import load_catalog

pytestmark = pytest.mark.fast

#: How the README names each mode in its count.
WORDS = {
    "oauth2": "OAuth providers",
    "api_key": "API-key providers",
    "basic": "basic-auth providers",
    "oauth2_client_credentials": "client-credentials providers",
    "jwt_bearer": "service-account provider",
    "github_app": "GitHub App provider",
}


def test_the_readme_counts_the_catalog_by_auth_mode() -> None:
    catalog = load_catalog()
    by_mode = Counter(provider.auth_mode for provider in catalog.values())
    assert set(by_mode) == set(WORDS), "a new mode needs its words in the README's count"
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text("utf-8")
    text = " ".join(readme.split())
    assert f"shows all {len(catalog)} and their default scopes" in text
    for mode, words in WORDS.items():
        found = re.search(rf"(\d+) {re.escape(words)}", text)
        assert found is not None, words
        assert int(found.group(1)) == by_mode[mode], f"{mode}: the catalog has {by_mode[mode]}"
