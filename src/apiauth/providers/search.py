"""Finding a provider among a hundred: words matched against the name people know, the
catalog name and the category, and an exact category. One rule for the dashboard's `?q=` and
`?category=` (which works without JavaScript) and `GET /api/v1/providers?q=&category=`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from apiauth.providers.catalog import Provider

__all__ = ["MAX_QUERY", "ProviderQuery", "search_text"]

MAX_QUERY = 100


def search_text(provider: Provider) -> str:
    """What a search matches against: the name people know, the catalog name, the category."""
    return " ".join((provider.display_name, provider.name, provider.category)).lower()


@dataclass(frozen=True)
class ProviderQuery:
    q: str
    category: str

    @classmethod
    def of(cls, q: str, category: str) -> Self:
        """Anything goes in, nothing breaks: a long or odd query is cut and matched as text."""
        return cls(" ".join(q.split())[:MAX_QUERY], category.strip()[:MAX_QUERY])

    @property
    def active(self) -> bool:
        return bool(self.q or self.category)

    def matches(self, provider: Provider) -> bool:
        if self.category and provider.category != self.category:
            return False
        text = search_text(provider)
        return all(word in text for word in self.q.lower().split())
