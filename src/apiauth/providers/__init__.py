"""The provider catalog: built-in OAuth providers as data, plus custom ones from a TOML file."""

from apiauth.providers.catalog import (
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
)

__all__ = [
    "Catalog",
    "CatalogError",
    "ConnectionParam",
    "ParamError",
    "Provider",
    "RefreshTokenStyle",
    "RevokeStyle",
    "Scope",
    "TokenAuthMethod",
    "emulated_url",
    "load_catalog",
]
