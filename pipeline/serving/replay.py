"""Replay protection for the transactional edge worker: recent request ids and a capture-time window.

A record is refused as *stale* when its capture time is too far from the worker's clock, and as
*replayed* when its request id was already accepted on the same input partition. Acceptance is staged
like the Kafka transaction that consumes the record: ``check`` records the id as pending, ``commit``
makes it permanent, ``abort`` forgets it (an aborted batch is redelivered and must not look replayed).

Pure logic: the caller passes ``now_ms`` (unix ms, the clock capture times are compared with).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from edgestream.pipeline.errors import ReplayedRequest, StaleCapture

P = TypeVar("P", bound=Hashable)

_NOTHING_EVICTED_MS = -1
"""Floor of a partition that never evicted an id (capture times are >= 0 by contract)."""


_Seen = tuple[int, int, bytes]
"""An accepted id: (seen_ms, capture_ms, request_id). ``seen_ms`` is the (clamped) worker time it was
accepted, the expiry clock; ``capture_ms`` raises the floor when it is evicted. A plain tuple: a
NamedTuple costs ~20x more to build, on the hot path."""


@dataclass(slots=True)
class _Partition:
    ids: set[bytes] = field(default_factory=set)
    """Every remembered id of the partition, committed and pending."""
    committed: deque[_Seen] = field(default_factory=deque)
    """Committed ids, oldest accepted first."""
    pending: deque[_Seen] = field(default_factory=deque)
    """Ids accepted in the open transaction, oldest first."""
    floor_ms: int = _NOTHING_EVICTED_MS
    """Captures at or before this are stale: the newest capture time of an evicted committed id."""
    txn_floor_ms: int = _NOTHING_EVICTED_MS
    """``floor_ms`` raised by pending ids evicted in the open transaction (>= ``floor_ms``)."""


class ReplayGuard(Generic[P]):
    """Refuses replayed request ids and stale capture times, per input partition, transactionally.

    **Guarantee.** A record is accepted only if ``now - max_age_ms <= capture <= now +
    max_future_skew_ms`` and its request id was not accepted (and committed, or pending in the open
    transaction) before on the same partition. An accepted id is remembered for ``window_ms`` after it
    was accepted. Since its capture time lay within the skew band then, ``window_ms >= max_age_ms +
    max_future_skew_ms`` means that by the time an id is forgotten, the id's capture time is older than
    ``max_age_ms``: a replay is refused as stale when it is no longer refused as replayed. The
    constructor refuses a shorter window. A device's records all land on one partition (keyed by
    device id), so a replay of its request meets the partition state that accepted the original.

    **Bounded memory.** A partition remembers at most ``max_entries_per_partition`` ids. When full, the
    oldest remembered id is evicted and the partition's *floor* rises to its capture time: from then
    on, any capture at or before the floor is refused as stale (the effective max age tightens to
    ``now - floor - 1``). An evicted id can therefore never be accepted again, so the guarantee holds
    with bounded memory; the price, paid only when the bound is reached, is that legitimate records
    captured no later than an evicted one are refused as stale too. Size the bound above the records a
    partition takes in ``window_ms`` to never pay it. Evicting an id pending in the open transaction
    raises a floor that belongs to the transaction and is dropped by ``abort``.

    **Transactions.** ``check`` raises or records the id as pending; ``commit`` makes the pending ids
    of a partition permanent, ``abort`` forgets them (their records are redelivered and must be
    accepted again); ``forget`` drops a revoked partition's state. A second check of a pending id in
    the same transaction (a duplicate inside one batch) is a replay.

    **Clock.** ``now_ms`` is clamped to the largest value seen, so a wall clock that steps back is
    treated as standing still until it catches up (otherwise an id forgotten at a later time could be
    accepted again at an earlier one).

    **Limit.** State lives in memory. When a partition moves to another worker (rebalance, crash), the
    new owner starts with an empty window for it: a replay of a record accepted by the previous owner
    is caught only by the age check. The exposure is bounded to replays within ``max_age_ms`` of the
    original's capture time that straddle a reassignment. The guard does not compare ids across
    partitions.

    **Where it runs.** After authentication (AES-GCM): the request id and capture time are in the AAD,
    so a replay is a re-sent record with both unchanged, and nobody without the device key can plant
    ids or raise floors (check before decrypting and a forger could block a device's future ids).
    """

    def __init__(
        self,
        *,
        window_ms: int,
        max_age_ms: int,
        max_future_skew_ms: int,
        max_entries_per_partition: int,
    ) -> None:
        if max_age_ms < 0 or max_future_skew_ms < 0:
            raise ValueError(
                f"max_age_ms and max_future_skew_ms must be >= 0, got {max_age_ms} and {max_future_skew_ms}"
            )
        if window_ms < max_age_ms + max_future_skew_ms:
            raise ValueError(
                f"window_ms ({window_ms}) must be >= max_age_ms + max_future_skew_ms "
                f"({max_age_ms} + {max_future_skew_ms}): an id forgotten earlier could be accepted again"
            )
        if max_entries_per_partition < 1:
            raise ValueError(f"max_entries_per_partition must be >= 1, got {max_entries_per_partition}")
        self.window_ms = window_ms
        """How long an accepted id is remembered, from its acceptance."""
        self.max_age_ms = max_age_ms
        """How far in the past a capture time may be."""
        self.max_future_skew_ms = max_future_skew_ms
        """How far in the future a capture time may be (device clock ahead of the worker's)."""
        self.max_entries_per_partition = max_entries_per_partition
        """Remembered ids per partition; beyond it the oldest is evicted and the floor rises."""
        self._parts: dict[P, _Partition] = {}
        self._now_ms = 0
        """The largest ``now_ms`` seen: the clamped clock."""

    def check(self, partition: P, request_id: bytes, capture_time_ms: int, now_ms: int) -> None:
        """Accept the record as pending in ``partition``'s open transaction, or raise.

        Raises StaleCapture (checked first) or ReplayedRequest; a refused record is not remembered.
        Expires ids older than ``window_ms`` from the front of the partition's queue on the way
        (amortised O(1)).
        """
        if now_ms < self._now_ms:
            now_ms = self._now_ms
        self._now_ms = now_ms
        part = self._parts.get(partition)
        if part is None:
            part = self._parts[partition] = _Partition()
        committed = part.committed
        expire_before_ms = now_ms - self.window_ms
        while committed and committed[0][0] < expire_before_ms:
            part.ids.discard(committed.popleft()[2])
        skew_ms = now_ms - capture_time_ms
        if skew_ms > self.max_age_ms:
            raise StaleCapture(skew_ms, self.max_age_ms)
        if -skew_ms > self.max_future_skew_ms:
            raise StaleCapture(skew_ms, self.max_future_skew_ms)
        if capture_time_ms <= part.txn_floor_ms:
            raise StaleCapture(skew_ms, now_ms - part.txn_floor_ms - 1)
        ids = part.ids
        if request_id in ids:
            raise ReplayedRequest(request_id)
        if len(ids) >= self.max_entries_per_partition:
            self._evict_oldest(part)
        ids.add(request_id)
        part.pending.append((now_ms, capture_time_ms, request_id))

    def commit(self, partition: P) -> None:
        """The transaction that consumed ``partition``'s pending records committed: keep their ids."""
        part = self._parts.get(partition)
        if part is None:
            return
        part.committed.extend(part.pending)
        part.pending.clear()
        part.floor_ms = part.txn_floor_ms

    def abort(self, partition: P) -> None:
        """The transaction aborted: forget ``partition``'s pending ids (their records come again)."""
        part = self._parts.get(partition)
        if part is None:
            return
        for _, _, request_id in part.pending:
            part.ids.discard(request_id)
        part.pending.clear()
        part.txn_floor_ms = part.floor_ms

    def forget(self, partition: P) -> None:
        """Drop everything about ``partition`` (revoked: another worker owns it now)."""
        self._parts.pop(partition, None)

    def entries(self, partition: P) -> int:
        """Ids remembered for ``partition``, committed and pending (a gauge for metrics)."""
        part = self._parts.get(partition)
        return 0 if part is None else len(part.ids)

    def floor_ms(self, partition: P) -> int | None:
        """Captures at or before this are refused because ids were evicted; None when none were."""
        part = self._parts.get(partition)
        if part is None or part.txn_floor_ms == _NOTHING_EVICTED_MS:
            return None
        return part.txn_floor_ms

    @staticmethod
    def _evict_oldest(part: _Partition) -> None:
        if part.committed:
            _, capture_ms, request_id = part.committed.popleft()
            part.floor_ms = max(part.floor_ms, capture_ms)
        else:
            _, capture_ms, request_id = part.pending.popleft()
        part.ids.discard(request_id)
        part.txn_floor_ms = max(part.txn_floor_ms, capture_ms)
