"""Key-encryption keys that only a key management service can unwrap (`APIAUTH_KMS`).

`service` says what apiauth asks of a KMS (the extension point for Google Cloud KMS,
HashiCorp Vault Transit and others), `aws` is AWS KMS, and `keys` stores, caches and uses the
keys a KMS wrapped as the vault's key source.
"""

from apiauth.kms.keys import KeyStore, StoredKey, VaultKeys, WrappedKeys
from apiauth.kms.service import (
    SERVICES,
    KeyManagementService,
    KmsError,
    KmsRefused,
    KmsUnavailable,
    kms_service,
)

__all__ = [
    "SERVICES",
    "KeyManagementService",
    "KeyStore",
    "KmsError",
    "KmsRefused",
    "KmsUnavailable",
    "StoredKey",
    "VaultKeys",
    "WrappedKeys",
    "kms_service",
]
