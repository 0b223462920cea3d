"""A newly assigned partition's replay memory, read back from the partition before it is served.

The replay guard (``pipeline/serving/replay.py``) lives in memory, so a partition that moves to this
worker (a restart, a rebalance, a crash of its previous owner) would start with an empty window, and
an envelope its previous owner answered could be answered again if re-sent within ``max_age_ms``.
So before a newly assigned partition is served, ``ReplayMemory.rebuild`` reads it back, from the first
offset whose record timestamp is within ``max_age_ms + max_future_skew_ms`` of now (``offsets_for_times``)
up to its committed offset, and remembers the request id of every record there that is an authentic
envelope in its place (the same decode, placement and AES-GCM checks admission makes). Records past the
committed offset are read by the worker itself, through the guard.

**What it covers.** A replay passes the age check only if its capture time is within ``max_age_ms``;
its original was produced after it was captured, so the original's record timestamp (the producer's
clock at sending, Kafka's default ``CreateTime``) is within the window read back, for any device whose
clock is within ``max_future_skew_ms`` of the worker's. A producer that sets its own record timestamps
far in the past can keep its own originals out of the window; only the device itself holds an
original before it is produced, so that harms no one else.

**Conservative.** It cannot tell which of those records its previous owner answered: it remembers every
authentic one, so an envelope that was refused then (rate limited, say) and re-sent after the
reassignment is refused as ``replayed``. Rate limits are not rebuilt.

**Bounded in time.** A partition's rebuild takes at most ``replay_rebuild_timeout_s`` from its first
try (the fetch loop waits for it, as it waits for positioning). A round that fails (the broker away, an
unexpected error) leaves the partition unserved and is tried again at the next positioning round, from
scratch. A partition not read to its committed offset when its time is spent is served anyway, with a
*held floor*: every capture at or before that moment plus ``max_future_skew_ms`` is refused as
``stale`` on it. No id its previous owner accepted can pass that (it was accepted before, so captured
no later than that), so no replay is answered; the price is that its backlog, and envelopes captured
within ``max_future_skew_ms`` after, are dead-lettered as ``stale``. ``unfinished`` counts these, and
each is logged as an error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from aiokafka import TopicPartition

from edgestream.pipeline import kafka
from edgestream.pipeline.security.keyring import KeyRing
from edgestream.workers.edge.admission import Admission
from edgestream.workers.edge.settings import WorkerSettings

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

log = logging.getLogger(__name__)

FETCH_TIMEOUT_MS = 200
"""How long one fetch of the read-back waits for records."""


class ReplayMemory:
    """Rebuilds the replay memory of newly assigned partitions (see the module docstring)."""

    def __init__(
        self, settings: WorkerSettings, admission: Admission, keyring: Callable[[], KeyRing], node_id: str
    ) -> None:
        self._settings = settings
        self._admission = admission
        self._keyring = keyring
        """The worker's current key ring (a rotation applies to the read-back too)."""
        self._client_id = f"{node_id}-replay-memory"
        self.unfinished = 0
        """Partitions served with a held floor because their rebuild did not finish (a metric)."""
        self.remembered = 0
        """Request ids remembered by rebuilds."""
        self._deadlines: dict[TopicPartition, float] = {}
        """Monotonic time by which each partition being rebuilt must be served."""

    async def rebuild(self, committed: Mapping[TopicPartition, int]) -> set[TopicPartition]:
        """Forget what the guard had for ``committed``'s partitions, then remember the request ids they
        committed in the window before their committed offset (the offsets given). Returns the
        partitions that may be served: rebuilt, or out of time and held at a floor. Never raises."""
        replays = self._admission.replays
        now_ms = int(time.time() * 1000)
        started_s = time.monotonic()
        for tp in self._deadlines.keys() - committed.keys():  # revoked meanwhile: a new first try
            del self._deadlines[tp]
        for tp in committed:
            replays.forget(tp)
            self._deadlines.setdefault(tp, started_s + self._settings.replay_rebuild_timeout_s)
        todo = {tp: end for tp, end in committed.items() if end > 0}
        remembered = self.remembered
        try:
            if todo:
                async with asyncio.timeout(max(0.0, min(self._deadlines[tp] for tp in todo) - started_s)):
                    await self._read_back(todo, now_ms)
        except Exception as err:  # a timeout, the broker, anything: try again, or hold at a floor
            log.warning("replay memory of %d partitions not rebuilt yet: %r", len(todo), err)
            for tp in todo:
                replays.forget(tp)
        late = {tp for tp in todo if time.monotonic() >= self._deadlines[tp]}
        self._hold(late, int(time.time() * 1000) + self._settings.max_future_skew_ms)
        ready = (set(committed) - set(todo)) | late
        for tp in ready:
            del self._deadlines[tp]
        log.info(
            "replay memory of %d partitions rebuilt in %.2f s: %d request ids",
            len(committed) - len(todo),
            time.monotonic() - started_s,
            self.remembered - remembered,
        )
        return ready

    def _hold(self, tps: set[TopicPartition], floor_ms: int) -> None:
        for tp in tps:
            self._admission.replays.hold(tp, floor_ms)
            self.unfinished += 1
            log.error(
                "%s[%d]: replay memory not rebuilt within %.1f s; refusing captures up to %d as stale",
                tp.topic,
                tp.partition,
                self._settings.replay_rebuild_timeout_s,
                floor_ms,
            )

    async def _read_back(self, todo: dict[TopicPartition, int], now_ms: int) -> None:
        """Read each of ``todo`` from the window's first offset to its end offset, removing each
        partition once read."""
        settings = self._settings
        since_ms = now_ms - settings.max_age_ms - settings.max_future_skew_ms
        async with kafka.started(kafka.consumer(settings.kafka, self._client_id)) as consumer:
            consumer.assign(list(todo))
            found = await consumer.offsets_for_times(dict.fromkeys(todo, since_ms))
            for tp, end in list(todo.items()):
                first = found.get(tp)
                if first is None or first.offset >= end:  # nothing in the window before the end
                    del todo[tp]
                    consumer.pause(tp)
                else:
                    consumer.seek(tp, first.offset)
            while todo:
                fetched = await consumer.getmany(*todo, timeout_ms=FETCH_TIMEOUT_MS)
                for tp, records in fetched.items():
                    self._remember(tp, records, todo.get(tp, 0), now_ms)
                for tp in list(todo):
                    if await consumer.position(tp) >= todo[tp]:
                        del todo[tp]
                        consumer.pause(tp)

    def _remember(
        self, tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]], end: int, now_ms: int
    ) -> None:
        keyring = self._keyring()
        for record in records:
            if record.offset >= end:
                return
            self.remembered += self._admission.remember(tp, record, keyring, now_ms)
