"""Looking for secrets where they must not be: in files, database dumps, logs and pages.

A secret is searched for as it is and hex-encoded (how `pg_dump` prints a `bytea` column, so a
plaintext that slipped into a binary column shows up too). Findings name the secret's label
("box refresh token"), never its value: a failing test must not leak what it protects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

MIN_SECRET_LENGTH = 8


class Secrets:
    """Secret values by label; only values long enough that a match cannot be chance."""

    def __init__(self) -> None:
        self.by_value: dict[str, str] = {}

    def add(self, label: str, value: str | None) -> None:
        if value is None:
            return
        assert len(value) >= MIN_SECRET_LENGTH, f"{label} is too short to search for"
        self.by_value.setdefault(value, label)

    def update(self, labelled: Mapping[str, str | None]) -> None:
        for label, value in labelled.items():
            self.add(label, value)

    def labels(self) -> set[str]:
        return set(self.by_value.values())

    def __len__(self) -> int:
        return len(self.by_value)

    def __repr__(self) -> str:
        return f"Secrets({len(self)} values)"

    def found_in(self, data: bytes | str) -> list[str]:
        """The labels of every secret `data` contains, as text or hex."""
        blob = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
        lowered = blob.lower()
        found = []
        for value, label in self.by_value.items():
            raw = value.encode()
            if raw in blob or raw.hex().encode() in lowered:
                found.append(label)
        return sorted(found)


def files_under(*roots: Path) -> Iterable[Path]:
    for root in roots:
        if root.is_file():
            yield root
        elif root.is_dir():
            yield from (path for path in sorted(root.rglob("*")) if path.is_file())


def leaks_in_files(secrets: Secrets, *roots: Path) -> dict[str, list[str]]:
    """Secret labels by file name, for every file under `roots` that holds one."""
    leaks: dict[str, list[str]] = {}
    for path in files_under(*roots):
        found = secrets.found_in(path.read_bytes())
        if found:
            leaks[str(path)] = found
    return leaks
