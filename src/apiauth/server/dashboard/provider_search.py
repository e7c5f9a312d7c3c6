"""Finding a provider among a hundred on the API Authentication and OAuth apps pages: the
`?q=` search and `?category=` filter (`providers.search`). The server filters (so it works
without JavaScript); dashboard.js filters the same rows as the person types."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Self, TypeVar

from fastapi import Request

from apiauth.providers import Provider
from apiauth.providers.search import ProviderQuery, search_text

__all__ = ["ProviderSearch", "group_by_category", "search_text"]

Row = TypeVar("Row")


class ProviderSearch(ProviderQuery):
    @classmethod
    def from_request(cls, request: Request) -> Self:
        params = request.query_params
        return cls.of(str(params.get("q", "")), str(params.get("category", "")))


def group_by_category(
    rows: Iterable[Row], provider_of: Callable[[Row], Provider]
) -> list[tuple[str, Sequence[Row]]]:
    """Rows by their provider's category, categories A to Z, rows in catalog order."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(provider_of(row).category, []).append(row)
    return sorted(groups.items(), key=lambda item: item[0].lower())
