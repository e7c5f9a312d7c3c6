"""apiauth's own tokens: recognisable, checksummed, random, stored only as hashes."""

from __future__ import annotations

import pytest

from apiauth.domain.token_format import (
    TokenKind,
    generate_token,
    hash_token,
    token_kind,
)

pytestmark = pytest.mark.fast


@pytest.mark.parametrize("kind", list(TokenKind))
def test_a_generated_token_is_recognised_by_its_prefix_and_checksum(kind: TokenKind) -> None:
    token = generate_token(kind)
    assert token.startswith(kind.prefix)
    assert token_kind(token) is kind


def test_tokens_are_unique() -> None:
    assert len({generate_token(TokenKind.SITE) for _ in range(2000)}) == 2000


def test_every_single_character_change_breaks_the_checksum() -> None:
    token = generate_token(TokenKind.SITE)
    body_start = len(TokenKind.SITE.prefix)
    for position in range(body_start, len(token)):
        replacement = "0" if token[position] != "0" else "1"
        changed = token[:position] + replacement + token[position + 1 :]
        assert token_kind(changed) is None, f"a change at {position} went unnoticed"


@pytest.mark.parametrize(
    "text",
    ["", "apiauth_site_", "apiauth_site_short", "ghp_" + "a" * 40, "apiauth_site_" + "!" * 49],
)
def test_look_alikes_are_not_tokens(text: str) -> None:
    assert token_kind(text) is None


def test_truncated_and_extended_tokens_are_not_tokens() -> None:
    token = generate_token(TokenKind.FUNCTION)
    assert token_kind(token[:-1]) is None
    assert token_kind(token + "a") is None


def test_a_prefix_swap_is_not_accepted_as_the_other_kind() -> None:
    token = generate_token(TokenKind.SITE)
    swapped = token.replace(TokenKind.SITE.prefix, TokenKind.PERSONAL.prefix)
    assert token_kind(swapped) is None


def test_the_hash_is_stable_and_hides_the_token() -> None:
    token = generate_token(TokenKind.PERSONAL)
    assert hash_token(token) == hash_token(token)
    assert token[len(TokenKind.PERSONAL.prefix) :] not in hash_token(token)
    assert len(hash_token(token)) == 64
