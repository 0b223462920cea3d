"""Which offsets are safe to commit when records finish out of order.

Records of one partition can finish out of order: they go to different micro-batches (one per model),
and a dead letter is acknowledged before a result fetched earlier. Committing offset ``n + 1`` says
"everything before ``n + 1`` is done", so the committable position of a partition is the lowest offset
fetched but not yet finished (or one past the last fetched when all are done).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

P = TypeVar("P", bound=Hashable)


@dataclass(slots=True)
class _Partition:
    pending: deque[int] = field(default_factory=deque)
    waiting: set[int] = field(default_factory=set)
    done: set[int] = field(default_factory=set)
    next_offset: int | None = None
    committed: int | None = None


class OffsetTracker(Generic[P]):
    """Tracks fetched and finished offsets per partition and yields safe commit positions."""

    def __init__(self) -> None:
        self._parts: dict[P, _Partition] = {}
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        """Records fetched and not yet finished, over all partitions."""
        return self._in_flight

    def in_flight_for(self, partitions: Iterable[P]) -> int:
        """Records in flight for the given partitions."""
        total = 0
        for tp in partitions:
            part = self._parts.get(tp)
            if part is not None:
                total += len(part.waiting)
        return total

    def track(self, partition: P, offset: int) -> None:
        """Record that ``offset`` was fetched; offsets of a partition must arrive increasing."""
        part = self._parts.setdefault(partition, _Partition())
        if part.pending and offset <= part.pending[-1]:
            raise ValueError(f"offset {offset} of {partition!r} fetched after {part.pending[-1]}")
        part.pending.append(offset)
        part.waiting.add(offset)
        part.next_offset = offset + 1
        self._in_flight += 1

    def done(self, partition: P, offset: int) -> None:
        """Record that ``offset`` is finished (its outputs are acknowledged)."""
        part = self._parts.get(partition)
        if part is None or offset not in part.waiting:
            raise ValueError(f"offset {offset} of {partition!r} is not in flight")
        part.waiting.discard(offset)
        part.done.add(offset)
        self._in_flight -= 1
        while part.pending and part.pending[0] in part.done:
            part.done.discard(part.pending.popleft())

    def position(self, partition: P) -> int | None:
        """The offset to commit for ``partition``: everything below it is finished."""
        part = self._parts.get(partition)
        if part is None or part.next_offset is None:
            return None
        return part.pending[0] if part.pending else part.next_offset

    def committable(self) -> dict[P, int]:
        """Positions that advanced since the last :meth:`mark_committed`."""
        out: dict[P, int] = {}
        for tp, part in self._parts.items():
            pos = self.position(tp)
            if pos is not None and pos != part.committed:
                out[tp] = pos
        return out

    def mark_committed(self, positions: dict[P, int]) -> None:
        """Remember what the broker acknowledged, so :meth:`committable` only returns news."""
        for tp, pos in positions.items():
            part = self._parts.get(tp)
            if part is not None:
                part.committed = pos

    def forget(self, partitions: Iterable[P]) -> int:
        """Drop partitions (revoked); returns how many in-flight records were dropped with them."""
        dropped = 0
        for tp in partitions:
            part = self._parts.pop(tp, None)
            if part is not None:
                dropped += len(part.waiting)
        self._in_flight -= dropped
        return dropped
