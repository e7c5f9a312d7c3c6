"""A failing test prints no token (tests/redaction.py): what pytest shows of a failed
assertion, captured output and logs has token-shaped values replaced, names kept."""

from __future__ import annotations

import secrets

import pytest

from apiauth.domain.token_format import TokenKind, generate_token
from tests.redaction import redact, redact_report

pytestmark = pytest.mark.fast


def test_tokens_of_every_shape_are_redacted_and_names_are_kept() -> None:
    tokens = [
        secrets.token_urlsafe(24),  # the emulator's codes and tokens
        secrets.token_urlsafe(48),
        secrets.token_hex(32),
        generate_token(TokenKind.SITE),
        generate_token(TokenKind.FUNCTION),
        generate_token(TokenKind.PERSONAL),
    ]
    names = (
        "test_two_servers_refresh_five_second_tokens_once_per_lifetime oauth2_client_credentials"
    )
    text = redact(f"{names}: Bearer {' and '.join(tokens)} at /tmp/pytest-of-root/pytest-0")
    for token in tokens:
        assert token not in text
    assert text.startswith(names)
    assert "/tmp/pytest-of-root/pytest-0" in text


def accepted(bearer: str) -> bool:
    return bearer == "never"


def test_a_failed_assertion_that_passed_a_token_to_a_helper_prints_it_redacted() -> None:
    bearer = secrets.token_urlsafe(32)
    with pytest.raises(AssertionError) as failure:
        assert accepted(bearer)
    shown = redact_report(failure.getrepr())
    printed = str(shown)
    assert "accepted(" in printed
    assert bearer not in printed
    assert bearer not in shown.reprcrash.message
