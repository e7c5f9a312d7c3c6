"""One module per auth mode behind one interface (`Mode`), so that the domain's shared
machinery - leases, single flight, backoff, health events, audit - never asks "is there a
refresh token?": it asks the credential's mode (DESIGN "Auth modes").

A mode is chosen by the token set's own `auth_mode` (`mode_of`), which is sealed with it, or
by a provider's catalog entry (`mode_named(provider.auth_mode)`) before there is a token.
Adding a mode means adding a module here and a name to `apiauth.providers.AuthMode`.
"""

from __future__ import annotations

from apiauth.oauth.modes._client_credentials import ClientCredentialsMode, JwtBearerMode
from apiauth.oauth.modes._github_app import GitHubAppMode
from apiauth.oauth.modes._interface import Injection, Mode, Schedule, SecretFields
from apiauth.oauth.modes._keys import ApiKeyMode, BasicMode
from apiauth.oauth.modes._oauth2 import AuthorizationCodeMode
from apiauth.oauth.token_set import TokenSet
from apiauth.providers import AuthMode

__all__ = [
    "PASTED_FIELDS",
    "ApiKeyMode",
    "AuthorizationCodeMode",
    "BasicMode",
    "ClientCredentialsMode",
    "GitHubAppMode",
    "Injection",
    "JwtBearerMode",
    "Mode",
    "Schedule",
    "SecretFields",
    "mode_named",
    "mode_of",
]

#: What a pasted credential (`credentials` of a new connection) holds, by mode.
PASTED_FIELDS: dict[str, tuple[str, ...]] = {
    "api_key": ("api_key",),
    "basic": ("username", "password"),
}

_MODES: dict[str, Mode] = {
    "oauth2": AuthorizationCodeMode(),
    "api_key": ApiKeyMode(),
    "basic": BasicMode(),
    "oauth2_client_credentials": ClientCredentialsMode(),
    "jwt_bearer": JwtBearerMode(),
    "github_app": GitHubAppMode(),
}


def mode_named(name: AuthMode) -> Mode:
    """The module of a catalog entry's `auth_mode`; a mode not built yet is refused clearly."""
    mode = _MODES.get(name)
    if mode is None:
        raise NotImplementedError(f"auth_mode {name!r} is not supported by this apiauth yet")
    return mode


def mode_of(token: TokenSet) -> Mode:
    """The mode that made this token set (and knows how to renew, send and show it)."""
    return mode_named(token.auth_mode)
