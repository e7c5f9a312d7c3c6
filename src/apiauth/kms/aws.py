"""AWS KMS (`APIAUTH_KMS=aws`): key-encryption keys made by `GenerateDataKey` under
`APIAUTH_KMS_KEY_ID` and unwrapped by `Decrypt`, both bound to apiauth by an encryption
context (a ciphertext made for another purpose with the same KMS key does not unwrap here).

boto3 finds credentials, region and endpoint the way every AWS tool does: `AWS_ACCESS_KEY_ID`
/ `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, `AWS_PROFILE`, an instance or task role;
`AWS_REGION` or `AWS_DEFAULT_REGION`; `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_KMS`) for a
VPC endpoint or a local stand-in such as moto's server. Timeouts are short and retries few:
a start that cannot reach KMS should say so in seconds, not minutes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from apiauth.kms.service import KmsRefused, KmsUnavailable
from apiauth.vault import KeyConfigError

__all__ = ["AwsKms"]

ENCRYPTION_CONTEXT = {"apiauth": "key-encryption-key"}
# Error codes that mean "not now" rather than "no".
# https://docs.aws.amazon.com/kms/latest/APIReference/API_Decrypt.html#API_Decrypt_Errors
_TRANSIENT_CODES = frozenset(
    {
        "ThrottlingException",
        "KMSInternalException",
        "DependencyTimeoutException",
        "KeyUnavailableException",
        "RequestTimeout",
        "ServiceUnavailable",
    }
)


class AwsKms:
    name = "aws"

    def __init__(self, client: Any) -> None:
        self._client = client

    @classmethod
    def from_environment(cls) -> AwsKms:
        try:
            import boto3
            from botocore.config import Config
            from botocore.exceptions import NoRegionError
        except ImportError:
            raise KeyConfigError(
                "APIAUTH_KMS=aws needs boto3: pip install 'apiauth[kms]'"
            ) from None
        config = Config(
            connect_timeout=2,
            read_timeout=5,
            retries={"max_attempts": 2, "mode": "standard"},
        )
        try:
            return cls(boto3.client("kms", config=config))
        except NoRegionError:
            raise KeyConfigError(
                "APIAUTH_KMS=aws: no AWS region is set: set AWS_REGION (or AWS_DEFAULT_REGION) "
                "to the region of APIAUTH_KMS_KEY_ID"
            ) from None

    @property
    def endpoint(self) -> str:
        return str(self._client.meta.endpoint_url)

    def generate_key(self, kms_key_id: str) -> tuple[bytes, bytes]:
        answer = self._call(
            "GenerateDataKey",
            kms_key_id,
            lambda: self._client.generate_data_key(
                KeyId=kms_key_id, KeySpec="AES_256", EncryptionContext=ENCRYPTION_CONTEXT
            ),
        )
        return bytes(answer["Plaintext"]), bytes(answer["CiphertextBlob"])

    def unwrap(self, wrapped: bytes, kms_key_id: str) -> bytes:
        answer = self._call(
            "Decrypt",
            kms_key_id,
            lambda: self._client.decrypt(
                CiphertextBlob=wrapped, KeyId=kms_key_id, EncryptionContext=ENCRYPTION_CONTEXT
            ),
        )
        return bytes(answer["Plaintext"])

    def describe(self, kms_key_id: str) -> str:
        answer = self._call(
            "DescribeKey", kms_key_id, lambda: self._client.describe_key(KeyId=kms_key_id)
        )
        metadata = answer["KeyMetadata"]
        state = metadata.get("KeyState", "?")
        if state != "Enabled":
            raise KmsRefused(f"AWS KMS key {metadata.get('Arn', kms_key_id)} is {state}")
        return f"AWS KMS key {metadata.get('Arn', kms_key_id)} ({state}) at {self.endpoint}"

    def _call(self, operation: str, kms_key_id: str, call: Callable[[], Any]) -> Any:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            ReadTimeoutError,
        )

        try:
            return call()
        except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError) as exc:
            raise KmsUnavailable(
                f"AWS KMS could not be reached at {self.endpoint} ({type(exc).__name__}) for "
                f"{operation}: check the network and AWS_ENDPOINT_URL / AWS_REGION"
            ) from None
        except ConnectionClosedError:
            raise KmsUnavailable(
                f"AWS KMS at {self.endpoint} closed the connection during {operation}"
            ) from None
        except NoCredentialsError:
            raise KmsRefused(
                "AWS KMS: no AWS credentials found: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or give the machine a role"
            ) from None
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "?"))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 400))
            message = f"AWS KMS answered {code} to {operation} with key {kms_key_id}"
            detail = str(error.get("Message") or "")
            if detail:
                message += f": {detail[:300]}"
            if code in _TRANSIENT_CODES or status >= 500:
                raise KmsUnavailable(message) from None
            raise KmsRefused(message) from None
        except BotoCoreError as exc:
            raise KmsUnavailable(
                f"AWS KMS at {self.endpoint}: {operation} failed ({type(exc).__name__})"
            ) from None
