"""What apiauth asks of a key management service, and the errors it can answer with.

This is the extension point for other KMSs (Google Cloud KMS, HashiCorp Vault Transit, …):
a class with `name` and the three methods of `KeyManagementService`, whose errors are
`KmsUnavailable` (could not be reached, or too busy: the caller keeps what it has and tries
again later) or `KmsRefused` (it answered no: a disabled or deleted key, revoked access, a
ciphertext it did not make), added to `SERVICES` under the name `APIAUTH_KMS` takes. Nothing
else in apiauth changes: the key-encryption keys it wraps are stored, cached and used the
same way for every service (`apiauth.kms.keys`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from apiauth.vault import KeyConfigError, VaultError

__all__ = [
    "SERVICES",
    "KeyManagementService",
    "KmsError",
    "KmsRefused",
    "KmsUnavailable",
    "kms_service",
]


class KmsError(VaultError):
    """The key management service did not unwrap or make a key. Never holds key material."""


class KmsUnavailable(KmsError):
    """The KMS could not be reached, timed out, or answered that it is busy (throttled, 5xx)."""


class KmsRefused(KmsError):
    """The KMS answered no: the key is disabled, deleted or unknown, this process may not
    use it, or the ciphertext is not one it made with that key."""


class KeyManagementService(Protocol):
    """A KMS that makes and unwraps 32-byte key-encryption keys under one of its keys
    (`kms_key_id`, in the service's own notation: an ARN, a resource name, a transit key)."""

    @property
    def name(self) -> str:
        """The `APIAUTH_KMS` value that selects it (stored with every key it wrapped)."""
        ...

    def generate_key(self, kms_key_id: str) -> tuple[bytes, bytes]:
        """A new random 32-byte key and its wrapped form (what `unwrap` takes back)."""
        ...

    def unwrap(self, wrapped: bytes, kms_key_id: str) -> bytes:
        """The 32 bytes `generate_key` wrapped as `wrapped`."""
        ...

    def describe(self, kms_key_id: str) -> str:
        """One line naming the key and its state, for `apiauth doctor`; raises `KmsError`
        when the key cannot be used."""
        ...


def _aws() -> KeyManagementService:
    from apiauth.kms.aws import AwsKms  # boto3 is an optional dependency (`apiauth[kms]`)

    return AwsKms.from_environment()


# `APIAUTH_KMS` values and how to connect to each (credentials from the service's usual
# environment settings).
SERVICES: Mapping[str, Callable[[], KeyManagementService]] = {"aws": _aws}


def kms_service(name: str) -> KeyManagementService:
    try:
        connect = SERVICES[name]
    except KeyError:
        known = ", ".join(sorted(SERVICES))
        raise KeyConfigError(f"unknown key management service {name!r} (known: {known})") from None
    return connect()
