"""What a failing test prints is redacted: a test must not leak what it protects.

An assertion that passes a token to a helper (`assert accepted(bearer)`) makes pytest print
the token when it fails, and captured logs and output are printed too. Every report's text
goes through `redact` first (`pytest_runtest_makereport` in conftest): apiauth's own tokens
by their prefix, and anything shaped like a random secret - a run of 20 or more URL-safe
characters mixing upper case, lower case and digits (`secrets.token_urlsafe`, the
emulator's tokens and keys), or 32 or more hex digits (`secrets.token_hex`) - is replaced.
Names in tracebacks (snake_case, no upper case) are left as they are."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

__all__ = ["redact", "redact_report"]

_APIAUTH = re.compile(r"\b(apiauth_(?:site|fn|pat))_[A-Za-z0-9]+")
_RUN = re.compile(r"[A-Za-z0-9_-]{20,}")
_HEX = re.compile(r"\b[0-9a-f]{32,}\b")


def _looks_random(run: str) -> bool:
    return (
        any(c.isupper() for c in run)
        and any(c.islower() for c in run)
        and any(c.isdigit() for c in run)
    )


def redact(text: str) -> str:
    text = _APIAUTH.sub(r"\1_<redacted>", text)
    text = _HEX.sub("<redacted hex>", text)
    return _RUN.sub(lambda m: "<redacted>" if _looks_random(m[0]) else m[0], text)


def redact_report(value: Any) -> Any:
    """`value` with every string in it redacted: a report's `longrepr` (pytest's traceback
    representation, a tree of dataclasses, changed in place so that the summary line keeps
    its message), a string, or a tuple or list of them."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [redact_report(item) for item in value]
    if isinstance(value, tuple):
        return tuple(redact_report(item) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            setattr(value, field.name, redact_report(getattr(value, field.name)))
    return value
