"""The format of apiauth's own secrets: site, function and personal access tokens.

`apiauth_<kind>_<43 random base62 chars><6 char checksum>`: 256 random bits, a prefix that
secret scanners (and people) recognise, and a CRC32 checksum so that a scanner can tell a
real token from a look-alike without asking us, as GitHub's tokens do. The checksum covers
the prefix too, so a token relabelled as another kind is no token at all. Only the SHA-256 hash
of a token is ever stored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import zlib
from enum import Enum

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BODY_LENGTH = 43  # 62**43 > 2**256
_CHECKSUM_LENGTH = 6


class TokenKind(Enum):
    SITE = "apiauth_site_"
    FUNCTION = "apiauth_fn_"
    PERSONAL = "apiauth_pat_"
    SESSION = "apiauth_sess_"

    @property
    def prefix(self) -> str:
        return self.value


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits.append(_ALPHABET[digit])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECKSUM_LENGTH)


def generate_token(kind: TokenKind) -> str:
    body = _base62(secrets.randbits(256), _BODY_LENGTH)
    return kind.prefix + body + _checksum(kind.prefix + body)


def token_kind(token: str) -> TokenKind | None:
    """The kind of a well-formed token (prefix, length, alphabet and checksum), else None."""
    for kind in TokenKind:
        if not token.startswith(kind.prefix):
            continue
        rest = token[len(kind.prefix) :]
        if len(rest) != _BODY_LENGTH + _CHECKSUM_LENGTH or not all(c in _ALPHABET for c in rest):
            return None
        body, checksum = rest[:_BODY_LENGTH], rest[_BODY_LENGTH:]
        return kind if hmac.compare_digest(_checksum(kind.prefix + body), checksum) else None
    return None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
