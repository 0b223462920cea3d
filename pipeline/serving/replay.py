"""Replay protection for the transactional edge worker: recent request ids and a capture-time window,
kept per device.

A record is refused as *stale* when its capture time is too far from the worker's clock, and as
*replayed* when its request id was already accepted for the same device on the same input partition.
Checking keeps nothing: ``check`` only reads, so a record refused by a later check (the rate limit)
leaves no trace. Acceptance is staged like the Kafka transaction that consumes the record: ``accept``
records the id as pending, ``commit`` makes it permanent, ``abort`` forgets it (an aborted batch is
redelivered and must not look replayed).

Pure logic: the caller passes ``now_ms`` (unix ms, the clock capture times are compared with).
"""

from __future__ import annotations

import hashlib
import os
from array import array
from collections import OrderedDict, deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

from edgestream.pipeline.errors import ReplayedRequest, StaleCapture

P = TypeVar("P", bound=Hashable)

NOTHING_EVICTED_MS: Final = -1
"""A floor below every capture time (capture times are >= 0 by contract): nothing was evicted."""
FLOOR_BUCKETS: Final = 1 << 16
"""Default number of floor buckets an evicted device's floor is kept in (8 bytes each)."""

_Seen = tuple[int, int, bytes]
"""An accepted id: (seen_ms, capture_ms, request_id). ``seen_ms`` is the (clamped) worker time it was
accepted, the expiry clock; ``capture_ms`` raises the device's floor when it is evicted. A plain tuple:
a NamedTuple costs ~20x more to build, on the hot path."""


@dataclass(slots=True)
class _Device:
    """What the guard keeps for one device on one partition."""

    bucket: int
    """Its floor bucket (a keyed hash of the device id)."""
    floor_ms: int
    """Captures at or before this are stale: the newest capture of an evicted committed id, or the
    floor of its bucket when this state was created."""
    txn_floor_ms: int
    """``floor_ms`` raised by pending ids evicted in the open transaction (>= ``floor_ms``)."""
    ids: set[bytes] = field(default_factory=set)
    """Every remembered id of the device, committed and pending."""
    committed: deque[_Seen] = field(default_factory=deque)
    """Committed ids, oldest accepted first."""
    pending: deque[_Seen] = field(default_factory=deque)
    """Ids accepted in the open transaction, oldest first."""


class ReplayGuard(Generic[P]):
    """Refuses replayed request ids and stale capture times, per device and partition, transactionally.

    **Guarantee.** A record is accepted only if ``now - max_age_ms <= capture <= now +
    max_future_skew_ms`` and its request id was not accepted (and committed, or pending in the open
    transaction) before for the same device on the same partition. An accepted id is remembered for
    ``window_ms`` after it was accepted. Since its capture time lay within the skew band then,
    ``window_ms >= max_age_ms + max_future_skew_ms`` means that by the time an id is forgotten, its
    capture time is older than ``max_age_ms``: a replay is refused as stale when it is no longer refused
    as replayed. The constructor refuses a shorter window. The edge pins a device's records to one
    partition per topic and a kind to its topic (``wrong_partition``, ``wrong_topic``), so a replay of
    a request meets the state that accepted the original.

    **Isolation.** Everything kept for a record belongs to its device (authenticated before the guard
    runs: one device key, one device id): its ids and its floor. A device that fills its own
    ``max_ids_per_device`` evicts its own oldest id, and its own floor rises to that id's capture time:
    from then on its captures at or before the floor are refused as stale, so an evicted id can never
    be accepted again. No record of one device changes how another device's record is decided, except
    through the global bounds below. A device within its rate (checked before ``accept``) never
    reaches its cap when ``max_ids_per_device >= burst + rate * window``.

    **Global bounds.** At most ``max_devices`` device states and ``max_ids`` ids are kept. Beyond
    either, the state of the device that accepted least recently goes whole. If its floor and every
    capture time it remembers are older than ``max_age_ms``, that loses nothing (a capture they refuse
    is stale anyway). Otherwise (``lossy_evictions``) the newest of them is kept in one of
    ``floor_buckets`` floor buckets, chosen by a hash of the device id keyed with a secret of this
    guard, and a device state created later starts with its bucket's floor. So the evicted device's
    ids can never be accepted again: the eviction does not reopen its replay window. The cost falls
    only on devices that have no state when they next send and share that bucket: their captures no
    later than the evicted device's last remembered one are refused as stale (until those are older
    than ``max_age_ms`` anyway). Devices with state are never affected, and nobody can aim at a bucket
    without the key. Reaching a bound takes more than ``max_devices`` authenticated devices, or more
    than ``max_ids / max_ids_per_device`` devices at their cap, accepting within ``window_ms``; size
    them above the devices routed to one worker to keep ``lossy_evictions`` at 0.

    **Transactions.** ``check`` raises or returns and keeps nothing; ``accept`` records the id as
    pending; ``commit`` makes the pending ids of a partition permanent, ``abort`` forgets them (their
    records are redelivered and must be accepted again); ``forget`` drops a revoked partition's state.
    A second ``check`` of a pending id in the same transaction (a duplicate inside one batch) is a
    replay. A device with pending ids is never evicted by the global bounds (the bounds are exceeded by
    at most the devices of the open transactions).

    **Restarts.** State lives in memory. A new owner of a partition rebuilds it before serving with
    ``remember`` (the ids of the records the partition committed in the last ``window_ms``), or, when it
    cannot, ``hold``s the partition at a floor that no id accepted before could pass (the worker's
    ``workers/edge/replaymemory.py``).

    **Clock.** ``now_ms`` is clamped to the largest value seen, so a wall clock that steps back is
    treated as standing still until it catches up (otherwise an id forgotten at a later time could be
    accepted again at an earlier one).

    **Where it runs.** After authentication (AES-GCM): the device id, request id and capture time are in
    the AAD, so a replay is a re-sent record with all three unchanged, and nobody without the device key
    can plant ids or raise floors.

    **Retries.** This is what the contract's one retry rule rests on (``docs/contract.md``, section 9,
    "Retries: one rule"): a device without an answer resends the same envelope unchanged; the first copy
    accepted is answered, later ones are ``replayed``, and past the window ``stale``.
    """

    def __init__(
        self,
        *,
        window_ms: int,
        max_age_ms: int,
        max_future_skew_ms: int,
        max_ids_per_device: int,
        max_devices: int,
        max_ids: int,
        floor_buckets: int = FLOOR_BUCKETS,
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
        for name, value in [
            ("max_ids_per_device", max_ids_per_device),
            ("max_devices", max_devices),
            ("max_ids", max_ids),
            ("floor_buckets", floor_buckets),
        ]:
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.window_ms = window_ms
        """How long an accepted id is remembered, from its acceptance."""
        self.max_age_ms = max_age_ms
        """How far in the past a capture time may be."""
        self.max_future_skew_ms = max_future_skew_ms
        """How far in the future a capture time may be (device clock ahead of the worker's)."""
        self.max_ids_per_device = max_ids_per_device
        """Remembered ids per device and partition; beyond it the device's oldest goes, its floor rises."""
        self.max_devices = max_devices
        """Device states kept at most; beyond it the least recently accepting device's state goes."""
        self.max_ids = max_ids
        """Ids kept at most, over every device; beyond it, as for ``max_devices``."""
        self.lossy_evictions = 0
        """Device states evicted by a global bound that raised a floor bucket (a metric)."""
        self._devices: OrderedDict[tuple[P, str], _Device] = OrderedDict()
        """Every device state, least recently accepting first."""
        self._open: dict[P, set[str]] = {}
        """Per partition, the devices with ids pending in its open transaction."""
        self._held: dict[P, int] = {}
        """Partition-wide floors (``hold``), for partitions whose memory could not be rebuilt."""
        self._buckets = array("q", [NOTHING_EVICTED_MS]) * floor_buckets
        self._hash_key = os.urandom(16)
        self._ids = 0
        self._now_ms = 0
        """The largest ``now_ms`` seen: the clamped clock."""

    # -- deciding ----------------------------------------------------------------------------------

    def check(self, partition: P, device: str, request_id: bytes, capture_time_ms: int, now_ms: int) -> None:
        """Raise StaleCapture (checked first) or ReplayedRequest, or return; keeps nothing for the record.

        Expires the device's ids older than ``window_ms`` on the way (amortised O(1)).
        """
        now_ms = self._clock(now_ms)
        dev = self._devices.get((partition, device))
        if dev is not None:
            self._expire(dev, now_ms)
        skew_ms = now_ms - capture_time_ms
        if skew_ms > self.max_age_ms:
            raise StaleCapture(skew_ms, self.max_age_ms)
        if -skew_ms > self.max_future_skew_ms:
            raise StaleCapture(skew_ms, self.max_future_skew_ms)
        floor_ms = self._buckets[self._bucket(device)] if dev is None else dev.txn_floor_ms
        if self._held:
            floor_ms = max(floor_ms, self._held.get(partition, NOTHING_EVICTED_MS))
        if capture_time_ms <= floor_ms:
            raise StaleCapture(skew_ms, now_ms - floor_ms - 1)
        if dev is not None and request_id in dev.ids:
            raise ReplayedRequest(request_id)

    def accept(self, partition: P, device: str, request_id: bytes, capture_time_ms: int, now_ms: int) -> None:
        """Remember the id as pending in ``partition``'s open transaction. Call it right after ``check``
        returned for the same record (and the checks after it passed)."""
        now_ms = self._clock(now_ms)
        dev = self._device(partition, device, now_ms)
        if request_id in dev.ids:  # not checked: refuse rather than count it twice
            raise ReplayedRequest(request_id)
        dev.ids.add(request_id)
        dev.pending.append((now_ms, capture_time_ms, request_id))
        self._ids += 1
        in_transaction = self._open.get(partition)
        if in_transaction is None:
            in_transaction = self._open[partition] = set()
        in_transaction.add(device)
        if self._ids > self.max_ids or len(self._devices) > self.max_devices:
            self._bound(now_ms)

    def remember(
        self, partition: P, device: str, request_id: bytes, capture_time_ms: int, now_ms: int
    ) -> bool:
        """Remember a committed id read back from the partition (a new owner rebuilding its memory), as
        accepted now; False when it is already known, or stale now (then it needs no memory)."""
        now_ms = self._clock(now_ms)
        skew_ms = now_ms - capture_time_ms
        if skew_ms > self.max_age_ms or -skew_ms > self.max_future_skew_ms:
            return False
        dev = self._device(partition, device, now_ms)
        if request_id in dev.ids:
            return False
        dev.ids.add(request_id)
        dev.committed.append((now_ms, capture_time_ms, request_id))
        self._ids += 1
        self._bound(now_ms)
        return True

    def hold(self, partition: P, floor_ms: int) -> None:
        """Refuse as stale every capture at or before ``floor_ms`` on ``partition``, for every device,
        until ``forget`` (a partition whose memory could not be rebuilt)."""
        self._held[partition] = max(self._held.get(partition, NOTHING_EVICTED_MS), floor_ms)

    # -- transactions ------------------------------------------------------------------------------

    def commit(self, partition: P) -> None:
        """The transaction that consumed ``partition``'s pending records committed: keep their ids."""
        for device in self._open.pop(partition, ()):
            dev = self._devices.get((partition, device))
            if dev is not None:
                dev.committed.extend(dev.pending)
                dev.pending.clear()
                dev.floor_ms = dev.txn_floor_ms
        self._bound(self._now_ms)

    def abort(self, partition: P) -> None:
        """The transaction aborted: forget ``partition``'s pending ids (their records come again)."""
        for device in self._open.pop(partition, ()):
            dev = self._devices.get((partition, device))
            if dev is not None:
                for _, _, request_id in dev.pending:
                    dev.ids.discard(request_id)
                self._ids -= len(dev.pending)
                dev.pending.clear()
                dev.txn_floor_ms = dev.floor_ms
        self._bound(self._now_ms)

    def forget(self, partition: P) -> None:
        """Drop everything about ``partition`` (revoked: another worker owns it now)."""
        for key in [key for key in self._devices if key[0] == partition]:
            self._ids -= len(self._devices.pop(key).ids)
        self._open.pop(partition, None)
        self._held.pop(partition, None)

    # -- gauges ------------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Ids remembered, committed and pending, over every device (a gauge for metrics)."""
        return self._ids

    def devices(self) -> int:
        """Device states kept (a gauge for metrics)."""
        return len(self._devices)

    def entries(self, partition: P, device: str) -> int:
        """Ids remembered for ``device`` on ``partition``, committed and pending."""
        dev = self._devices.get((partition, device))
        return 0 if dev is None else len(dev.ids)

    def floor_ms(self, partition: P, device: str) -> int | None:
        """Captures of ``device`` at or before this are refused as stale; None when nothing raised it."""
        dev = self._devices.get((partition, device))
        floor_ms = self._buckets[self._bucket(device)] if dev is None else dev.txn_floor_ms
        floor_ms = max(floor_ms, self._held.get(partition, NOTHING_EVICTED_MS))
        return None if floor_ms == NOTHING_EVICTED_MS else floor_ms

    # -- inside ------------------------------------------------------------------------------------

    def _clock(self, now_ms: int) -> int:
        if now_ms < self._now_ms:
            return self._now_ms
        self._now_ms = now_ms
        return now_ms

    def _bucket(self, device: str) -> int:
        digest = hashlib.blake2b(device.encode(), digest_size=8, key=self._hash_key).digest()
        return int.from_bytes(digest, "little") % len(self._buckets)

    def _device(self, partition: P, device: str, now_ms: int) -> _Device:
        """The device's state, created (with its bucket's floor) if it has none; most recent now, and
        with room for one more id."""
        key = (partition, device)
        dev = self._devices.get(key)
        if dev is None:
            bucket = self._bucket(device)
            floor_ms = self._buckets[bucket]
            dev = self._devices[key] = _Device(bucket, floor_ms, floor_ms)
            return dev
        self._devices.move_to_end(key)
        self._expire(dev, now_ms)
        if len(dev.ids) >= self.max_ids_per_device:
            self._evict_oldest_id(dev)
        return dev

    def _expire(self, dev: _Device, now_ms: int) -> None:
        committed = dev.committed
        expire_before_ms = now_ms - self.window_ms
        while committed and committed[0][0] < expire_before_ms:
            dev.ids.discard(committed.popleft()[2])
            self._ids -= 1

    def _evict_oldest_id(self, dev: _Device) -> None:
        if dev.committed:
            _, capture_ms, request_id = dev.committed.popleft()
            dev.floor_ms = max(dev.floor_ms, capture_ms)
        else:
            _, capture_ms, request_id = dev.pending.popleft()
        dev.ids.discard(request_id)
        dev.txn_floor_ms = max(dev.txn_floor_ms, capture_ms)
        self._ids -= 1

    def _bound(self, now_ms: int) -> None:
        """Evict least recently accepting devices while a global bound is exceeded (not those with
        pending ids: they move to the back, so each device is looked at most once)."""
        devices = self._devices
        for _ in range(len(devices)):
            if len(devices) <= self.max_devices and self._ids <= self.max_ids:
                return
            key, dev = next(iter(devices.items()))
            if dev.pending:
                devices.move_to_end(key)
                continue
            del devices[key]
            self._ids -= len(dev.ids)
            keep_ms = max([dev.txn_floor_ms, *(capture_ms for _, capture_ms, _ in dev.committed)])
            # Kept when a capture it refuses could still be fresh and the bucket does not refuse it yet.
            if keep_ms >= now_ms - self.max_age_ms and keep_ms > self._buckets[dev.bucket]:
                self.lossy_evictions += 1
                self._buckets[dev.bucket] = keep_ms
