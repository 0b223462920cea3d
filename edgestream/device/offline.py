"""The offline queue: telemetry that can wait for a session, each item with its time to live.

Items go out in the order they were queued once a session is up; one whose time to live passed is
dropped and counted (``expired``), and when the queue is full the oldest is dropped and counted
(``overflowed``). Times are monotonic seconds.
"""

from __future__ import annotations

from collections import deque
from typing import Final, Generic, TypeVar

T = TypeVar("T")

DEFAULT_MAX_ITEMS: Final = 1000
"""Most items held."""


class OfflineQueue(Generic[T]):
    """Items waiting for a session, oldest first."""

    def __init__(self, max_items: int = DEFAULT_MAX_ITEMS) -> None:
        if max_items < 1:
            raise ValueError("an offline queue holds at least one item")
        self._items: deque[tuple[float, T]] = deque()
        self._max = max_items
        self.expired = 0
        """Items dropped because their time to live passed before a session came."""
        self.overflowed = 0
        """Items dropped because the queue was full (the oldest go first)."""

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T, *, ttl_s: float, now_s: float) -> None:
        """Queue ``item`` until ``now_s + ttl_s``."""
        if len(self._items) >= self._max:
            self._items.popleft()
            self.overflowed += 1
        self._items.append((now_s + ttl_s, item))

    def take(self, now_s: float) -> list[tuple[float, T]]:
        """Every item still alive with its expiry, in order (the queue is emptied; expired ones are
        counted)."""
        live: list[tuple[float, T]] = []
        while self._items:
            entry = self._items.popleft()
            if entry[0] > now_s:
                live.append(entry)
            else:
                self.expired += 1
        return live

    def put_back(self, entries: list[tuple[float, T]]) -> None:
        """Return ``entries`` from `take` (not sent after all) to the front, in order, with their
        expiry unchanged."""
        self._items.extendleft(reversed(entries))
