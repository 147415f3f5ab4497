"""Sliding windows over the last W tokens, built from per-scrape counts.

A scrape brings counts since the previous one, so a window is a short tuple of per-scrape
entries. When the newest entries already cover W tokens the oldest one is cut to the
part that still fits, its counts scaled pro rata (the tokens inside a scrape are not
ordered), so totals are over exactly min(W, seen) tokens. Everything is immutable:
``add`` returns a new window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Self, TypeVar


class _Scalable(Protocol):
    tokens: float

    def scaled(self, factor: float) -> Self: ...


_Entry = TypeVar("_Entry", bound=_Scalable)


def _keep_last_tokens(entries: tuple[_Entry, ...], capacity: int) -> tuple[_Entry, ...]:
    kept: list[_Entry] = []
    room = float(capacity)
    for entry in reversed(entries):
        if room <= 0:
            break
        kept.append(entry if entry.tokens <= room else entry.scaled(room / entry.tokens))
        room -= min(entry.tokens, room)
    return tuple(reversed(kept))


@dataclass(frozen=True, slots=True)
class BreachEntry:
    tokens: float
    breaches: float
    # Index l-1: tokens that exited at layer l; empty when the scrape carried no histogram.
    exit_histogram: tuple[float, ...] = ()

    def scaled(self, factor: float) -> BreachEntry:
        return BreachEntry(self.tokens * factor, self.breaches * factor, tuple(n * factor for n in self.exit_histogram))


@dataclass(frozen=True, slots=True)
class BreachWindow:
    """Confidence breaches and exit layers over the last ``capacity`` tokens."""

    capacity: int
    entries: tuple[BreachEntry, ...] = ()

    def add(self, entry: BreachEntry) -> BreachWindow:
        if entry.tokens <= 0:
            return self
        return BreachWindow(self.capacity, _keep_last_tokens((*self.entries, entry), self.capacity))

    @property
    def num_tokens(self) -> float:
        return sum(entry.tokens for entry in self.entries)

    @property
    def num_breaches(self) -> float:
        return sum(entry.breaches for entry in self.entries)

    @property
    def is_full(self) -> bool:
        # Pro-rata cuts leave float residue; a window within a thousandth of a token is full.
        return self.num_tokens >= self.capacity - 1e-3

    @property
    def breach_rate(self) -> float:
        tokens = self.num_tokens
        return self.num_breaches / tokens if tokens > 0 else 0.0

    def exit_histogram(self) -> tuple[float, ...] | None:
        """Tokens per exit layer over the window; None if any scrape in it lacked a histogram."""
        if not self.entries or any(not entry.exit_histogram for entry in self.entries):
            return None
        length = max(len(entry.exit_histogram) for entry in self.entries)
        totals = [0.0] * length
        for entry in self.entries:
            for index, count in enumerate(entry.exit_histogram):
                totals[index] += count
        return tuple(totals)


@dataclass(frozen=True, slots=True)
class ShadowEntry:
    tokens: float
    matches: float

    def scaled(self, factor: float) -> ShadowEntry:
        return ShadowEntry(self.tokens * factor, self.matches * factor)


@dataclass(frozen=True, slots=True)
class ShadowWindow:
    """Shadow full-depth checks: how many sampled tokens matched full depth, last ``capacity``."""

    capacity: int
    entries: tuple[ShadowEntry, ...] = ()

    def add(self, entry: ShadowEntry) -> ShadowWindow:
        if entry.tokens <= 0:
            return self
        return ShadowWindow(self.capacity, _keep_last_tokens((*self.entries, entry), self.capacity))

    @property
    def num_tokens(self) -> float:
        return sum(entry.tokens for entry in self.entries)

    @property
    def is_full(self) -> bool:
        return self.num_tokens >= self.capacity - 1e-3

    @property
    def agreement(self) -> float | None:
        tokens = self.num_tokens
        return sum(entry.matches for entry in self.entries) / tokens if tokens > 0 else None
