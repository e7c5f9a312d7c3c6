"""apiauth: connect OAuth providers once, hand fresh bearer tokens to builds and functions.

Importing the package loads only the client library (`apiauth.client`), because
`pip install apiauth` installs just that and httpx; the server lives in subpackages that need
the `server` extra and are imported explicitly.
"""

from apiauth.client import (
    Account,
    ApiAuthError,
    BrokerUnavailable,
    ConnectLink,
    FunctionToken,
    InvalidRequest,
    NotConfigured,
    ProviderSecret,
    Secrets,
    Unauthorized,
    VisitorDeletion,
    __version__,
    clear_cache,
    create_connect_session,
    create_function_token,
    delete_visitor,
    get_secrets,
    get_secrets_async,
    proxy,
    with_secrets,
)

__all__ = [
    "Account",
    "ApiAuthError",
    "BrokerUnavailable",
    "ConnectLink",
    "FunctionToken",
    "InvalidRequest",
    "NotConfigured",
    "ProviderSecret",
    "Secrets",
    "Unauthorized",
    "VisitorDeletion",
    "__version__",
    "clear_cache",
    "create_connect_session",
    "create_function_token",
    "delete_visitor",
    "get_secrets",
    "get_secrets_async",
    "proxy",
    "with_secrets",
]
