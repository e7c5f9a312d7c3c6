"""The server's errors: what domain, OAuth and storage code can find wrong.

The HTTP layer and the CLI each turn them into a status code or a message in one place;
nothing below them formats an HTTP response.

Messages are written for the person who will read them, and never contain a secret.
"""

from __future__ import annotations


class ApiAuthServerError(Exception):
    """Base of every domain error; `status` is the HTTP status the API answers with."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigurationError(ApiAuthServerError):
    status = 500
    code = "configuration_error"


class NotFound(ApiAuthServerError):
    status = 404
    code = "not_found"


class Conflict(ApiAuthServerError):
    status = 409
    code = "conflict"


class InvalidInput(ApiAuthServerError):
    status = 422
    code = "invalid_input"


class UrlNotAllowed(InvalidInput):
    """A URL the server would call points somewhere the URL policy forbids (SSRF)."""

    code = "url_not_allowed"


class DiscoveryFailed(InvalidInput):
    """A URL given to find an OAuth server led to no usable description of one (no metadata,
    metadata that breaks its RFC, a server apiauth cannot work with safely), or a dynamic
    client registration failed. The message says what was tried and what to do."""

    code = "discovery_failed"


class RateLimited(ApiAuthServerError):
    """Too many requests from one token, member or address; `retry_after` in seconds."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AuthenticationFailed(ApiAuthServerError):
    status = 401
    code = "unauthorized"


class PermissionDenied(ApiAuthServerError):
    status = 403
    code = "forbidden"


class OAuthFlowError(ApiAuthServerError):
    """The OAuth dance failed: bad or replayed state, denied consent, a provider error.

    `return_to` is the local page the flow started from, when it is known, so that the
    person lands back there with the message.
    """

    status = 400
    code = "oauth_error"
    return_to: str | None = None
    # A visitor's flow: the site's page to send the visitor back to (`visitors.py`).
    return_url: str | None = None


class ConnectLinkSpent(ApiAuthServerError):
    """A visitor's connect link was used already or expired; `return_url` is the site's
    page to send the visitor back to."""

    status = 410
    code = "link_spent"
    return_url: str | None = None


class ProviderNotConfigured(ApiAuthServerError):
    status = 409
    code = "provider_not_configured"


class ProviderError(ApiAuthServerError):
    """A provider answered something unusable (or nothing) during an exchange or refresh.

    `transient` errors (timeouts, connection errors, 5xx, 429) are worth retrying later,
    `retry_after` seconds from now when the provider said so.
    """

    status = 502
    code = "provider_error"

    def __init__(
        self, message: str, *, transient: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.transient = transient
        self.retry_after = retry_after


class InvalidGrant(ProviderError):
    """The provider refused the code or refresh token (`invalid_grant`): re-authorize."""

    code = "invalid_grant"


class TokenRejected(ProviderError):
    """The provider's API refused the access token (HTTP 401): refresh it or re-authorize."""

    code = "token_rejected"
