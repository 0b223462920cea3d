"""Deadline-aware micro-batching: group items by key, close a batch when it is full, old, or urgent.

A batch for one key (model, version) closes at the earliest of:

* ``max_batch`` items are in it;
* its first item has waited ``max_wait_ms``;
* the tightest deadline among its items, minus the time a batch of this key is expected to take
  (an exponentially weighted average of observed service times), has arrived. Waiting longer would
  make that item miss its latency budget, so the batch goes now even if it is small.

Pure logic: the caller passes ``now_s`` (``time.monotonic()``), which keeps it testable without sleeps.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

CloseReason = Literal["full", "max_wait", "deadline", "drain"]


@dataclass(slots=True)
class Batch(Generic[K, T]):
    """A closed batch, ready to run."""

    key: K
    """The grouping key, e.g. ``(model, version)``."""
    items: list[T]
    """The items, in arrival order."""
    opened_s: float
    """Monotonic time the first item arrived."""
    reason: CloseReason
    """Why the batch closed."""


@dataclass(slots=True)
class _Open(Generic[T]):
    items: list[T] = field(default_factory=list)
    opened_s: float = 0.0
    min_deadline_s: float = float("inf")


class ServiceTimeEstimate:
    """Exponentially weighted average of how long a batch of each key takes (infer + produce)."""

    def __init__(self, initial_s: float = 0.005, alpha: float = 0.2) -> None:
        if initial_s < 0 or not 0 < alpha <= 1:
            raise ValueError("initial_s must be >= 0 and alpha in (0, 1]")
        self._initial_s = initial_s
        self._alpha = alpha
        self._by_key: dict[Hashable, float] = {}

    def observe(self, key: Hashable, seconds: float) -> None:
        """Fold one observed service time into the key's average."""
        prev = self._by_key.get(key)
        self._by_key[key] = seconds if prev is None else prev + self._alpha * (seconds - prev)

    def __call__(self, key: Hashable) -> float:
        """Expected service time of the next batch of ``key``, seconds."""
        return self._by_key.get(key, self._initial_s)


class MicroBatcher(Generic[K, T]):
    """Groups items by key into batches bounded by size, age and the items' deadlines."""

    def __init__(
        self,
        max_batch: int,
        max_wait_ms: float,
        service_time_s: Callable[[K], float] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self._service_time_s: Callable[[K], float] = service_time_s or (lambda _key: 0.0)
        self._open: dict[K, _Open[T]] = {}
        self._full: list[Batch[K, T]] = []
        self._pending = 0

    def __len__(self) -> int:
        """Items held, in open and in full-but-not-yet-popped batches."""
        return self._pending

    def add(self, key: K, item: T, *, now_s: float, deadline_s: float) -> None:
        """Add an item that must be answered by ``deadline_s`` (monotonic seconds)."""
        batch = self._open.get(key)
        if batch is None:
            batch = self._open[key] = _Open(opened_s=now_s)
        batch.items.append(item)
        batch.min_deadline_s = min(batch.min_deadline_s, deadline_s)
        self._pending += 1
        if len(batch.items) >= self.max_batch:
            del self._open[key]
            self._full.append(Batch(key, batch.items, batch.opened_s, "full"))

    def close_at_s(self, key: K) -> float | None:
        """When the open batch for ``key`` must close, or None if there is none."""
        batch = self._open.get(key)
        if batch is None:
            return None
        return self._close_at(key, batch)[0]

    def _close_at(self, key: K, batch: _Open[T]) -> tuple[float, CloseReason]:
        by_age = batch.opened_s + self.max_wait_s
        by_deadline = batch.min_deadline_s - self._service_time_s(key)
        return (by_deadline, "deadline") if by_deadline < by_age else (by_age, "max_wait")

    def next_due_s(self) -> float | None:
        """The earliest time any held batch is ready: now-ish if a full one waits, else None if empty."""
        if self._full:
            return float("-inf")
        return min((self._close_at(k, b)[0] for k, b in self._open.items()), default=None)

    def pop_ready(self, now_s: float) -> list[Batch[K, T]]:
        """Remove and return every batch that is full or due at ``now_s``, oldest first."""
        ready, self._full = self._full, []
        for key, batch in list(self._open.items()):
            close_s, reason = self._close_at(key, batch)
            if close_s <= now_s:
                del self._open[key]
                ready.append(Batch(key, batch.items, batch.opened_s, reason))
        self._pending -= sum(len(b.items) for b in ready)
        ready.sort(key=lambda b: b.opened_s)
        return ready

    def drain(self) -> list[Batch[K, T]]:
        """Remove and return everything held, e.g. at shutdown or when partitions are revoked."""
        ready, self._full = self._full, []
        ready.extend(Batch(k, b.items, b.opened_s, "drain") for k, b in self._open.items())
        self._open.clear()
        self._pending = 0
        ready.sort(key=lambda b: b.opened_s)
        return ready

    def remove(self, predicate: Callable[[T], bool]) -> list[T]:
        """Remove and return the held items matching ``predicate`` (their partitions were revoked)."""
        removed: list[T] = []
        for key, batch in list(self._open.items()):
            keep = [it for it in batch.items if not predicate(it)]
            removed.extend(it for it in batch.items if predicate(it))
            if keep:
                batch.items = keep
            else:
                del self._open[key]
        for full in self._full:
            removed.extend(it for it in full.items if predicate(it))
            full.items = [it for it in full.items if not predicate(it)]
        self._full = [b for b in self._full if b.items]
        self._pending -= len(removed)
        return removed

    def __iter__(self) -> Iterator[K]:
        """Keys with an open batch."""
        return iter(list(self._open))
