"""Deadline-aware micro-batching: one open batch at a time, closed when it is full, old, or urgent.

The open batch closes at the earliest of:

* ``max_batch`` items are in it;
* its first item has waited ``max_wait_ms``;
* the tightest deadline among its items, minus the time a batch is expected to take (an exponentially
  weighted average of observed service times), has arrived. Waiting longer would make that item miss
  its latency budget, so the batch goes now even if it is small.

A batch that fills closes at once and the next item opens a new one, so closed batches may queue until
they are popped, oldest first. The edge worker's batches are its *units* of work: every record fetched
since the previous unit closed, whatever its model (the worker groups a unit by model when it infers).

Pure logic: the caller passes ``now_s`` (``time.monotonic()``), which keeps it testable without sleeps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

T = TypeVar("T")

CloseReason = Literal["full", "max_wait", "deadline", "drain"]
"""Why a batch closed."""


@dataclass(slots=True)
class Batch(Generic[T]):
    """A closed batch, ready to run."""

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
    """Exponentially weighted average of how long a batch takes (infer + produce)."""

    def __init__(self, initial_s: float = 0.005, alpha: float = 0.2) -> None:
        if initial_s < 0 or not 0 < alpha <= 1:
            raise ValueError("initial_s must be >= 0 and alpha in (0, 1]")
        self._initial_s = initial_s
        self._alpha = alpha
        self._average_s: float | None = None

    def observe(self, seconds: float) -> None:
        """Fold one observed service time into the average (the first one replaces ``initial_s``)."""
        prev = self._average_s
        self._average_s = seconds if prev is None else prev + self._alpha * (seconds - prev)

    def __call__(self) -> float:
        """Expected service time of the next batch, seconds."""
        return self._initial_s if self._average_s is None else self._average_s


class MicroBatcher(Generic[T]):
    """Collects items into one open batch at a time, bounded by size, age and the items' deadlines."""

    def __init__(
        self,
        max_batch: int,
        max_wait_ms: float,
        service_time_s: Callable[[], float] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self._service_time_s: Callable[[], float] = service_time_s or (lambda: 0.0)
        self._open: _Open[T] | None = None
        self._full: list[Batch[T]] = []
        self._pending = 0

    def __len__(self) -> int:
        """Items held, in the open batch and in full-but-not-yet-popped ones."""
        return self._pending

    def add(self, item: T, *, now_s: float, deadline_s: float) -> None:
        """Add an item that must be answered by ``deadline_s`` (monotonic seconds)."""
        batch = self._open
        if batch is None:
            batch = self._open = _Open(opened_s=now_s)
        batch.items.append(item)
        batch.min_deadline_s = min(batch.min_deadline_s, deadline_s)
        self._pending += 1
        if len(batch.items) >= self.max_batch:
            self._open = None
            self._full.append(Batch(batch.items, batch.opened_s, "full"))

    def close_at_s(self) -> float | None:
        """When the open batch must close, or None if there is none."""
        return None if self._open is None else self._close_at(self._open)[0]

    def _close_at(self, batch: _Open[T]) -> tuple[float, CloseReason]:
        by_age = batch.opened_s + self.max_wait_s
        by_deadline = batch.min_deadline_s - self._service_time_s()
        return (by_deadline, "deadline") if by_deadline < by_age else (by_age, "max_wait")

    def next_due_s(self) -> float | None:
        """The earliest time a held batch is ready: now-ish if a full one waits, else None if empty."""
        if self._full:
            return float("-inf")
        return self.close_at_s()

    def pop_ready(self, now_s: float) -> list[Batch[T]]:
        """Remove and return every batch that is full or due at ``now_s``, oldest first."""
        ready, self._full = self._full, []
        if self._open is not None:
            close_s, reason = self._close_at(self._open)
            if close_s <= now_s:
                ready.append(Batch(self._open.items, self._open.opened_s, reason))
                self._open = None
        self._pending -= sum(len(b.items) for b in ready)
        return ready

    def drain(self) -> list[Batch[T]]:
        """Remove and return everything held, oldest first, e.g. at shutdown."""
        ready, self._full = self._full, []
        if self._open is not None:
            ready.append(Batch(self._open.items, self._open.opened_s, "drain"))
            self._open = None
        self._pending = 0
        return ready

    def remove(self, predicate: Callable[[T], bool]) -> list[T]:
        """Remove and return the held items matching ``predicate`` (their partitions were revoked)."""
        removed: list[T] = []
        if self._open is not None:
            removed.extend(it for it in self._open.items if predicate(it))
            self._open.items = [it for it in self._open.items if not predicate(it)]
            if not self._open.items:
                self._open = None
        for full in self._full:
            removed.extend(it for it in full.items if predicate(it))
            full.items = [it for it in full.items if not predicate(it)]
        self._full = [b for b in self._full if b.items]
        self._pending -= len(removed)
        return removed
