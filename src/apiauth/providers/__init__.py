"""The provider catalog: built-in OAuth providers as data, plus custom ones from a TOML file."""

from apiauth.providers.catalog import (
    KEY_MODES,
    MACHINE_MODES,
    AuthMode,
    Catalog,
    CatalogError,
    ConnectionParam,
    ParamError,
    Provider,
    RefreshTokenStyle,
    RevokeStyle,
    Scope,
    TokenAuthMethod,
    emulated_url,
    load_catalog,
    parse_provider_entry,
)
from apiauth.providers.demo_apps import demo_client

__all__ = [
    "KEY_MODES",
    "MACHINE_MODES",
    "AuthMode",
    "Catalog",
    "CatalogError",
    "ConnectionParam",
    "ParamError",
    "Provider",
    "RefreshTokenStyle",
    "RevokeStyle",
    "Scope",
    "TokenAuthMethod",
    "demo_client",
    "emulated_url",
    "load_catalog",
    "parse_provider_entry",
]
