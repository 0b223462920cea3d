"""The worker's first loop: fetch, and admit what was fetched into the open unit.

Each turn: wait out the pacing interval under load (``pacing.py``), position the partitions assigned
or rewound since the last turn at their committed offsets (``positioning.py``), pause every partition
while ``max_in_flight`` records are held (fetched, not yet committed) and resume at half (while paused
it waits for a commit to end, not for a fetch from paused partitions to time out), fetch, take
the key file's current ring (one ``stat``), and admit each record fetched for a partition in service
(``admission.py``): it joins the open unit, answered or refused later. Records of a partition that is
not in service (revoked, or waiting to be positioned) are dropped here and read again from its
committed offset; records fetched again after a rewind that were already admitted are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer, TopicPartition

from edgestream.pipeline.observability.health import Readiness
from edgestream.pipeline.observability.metrics import WorkerMetrics
from edgestream.pipeline.security.keyring import KeyRing
from edgestream.pipeline.security.keysource import KeyFileWatcher
from edgestream.pipeline.serving.batching import MicroBatcher
from edgestream.workers.edge.admission import Admission, Item
from edgestream.workers.edge.pacing import FetchPacing
from edgestream.workers.edge.positioning import Partitions
from edgestream.workers.edge.settings import WorkerSettings
from edgestream.workers.edge.status import WorkerStats

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

log = logging.getLogger(__name__)

FETCH_TIMEOUT_MS = 100
"""Longest a fetch waits for records (a fetch returns as soon as some are there)."""


class Intake:
    """Fetches a worker's partitions and admits their records into its open unit.

    ``held``: records the worker holds (open, being processed, staged); ``fetched``: called after a
    fetch that returned records (the process loop wakes); ``tick``: called after every fetch (periodic
    chores)."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        settings: WorkerSettings,
        *,
        keys: KeyFileWatcher,
        admission: Admission,
        partitions: Partitions,
        open_unit: MicroBatcher[Item],
        stats: WorkerStats,
        metrics: WorkerMetrics,
        readiness: Readiness,
        held: Callable[[], int],
        fetched: Callable[[], None],
        tick: Callable[[], None],
        released: asyncio.Event | None = None,
    ) -> None:
        self._consumer = consumer
        self._max_in_flight = settings.max_in_flight
        self._max_records = settings.fetch_max_records
        self._pacing = FetchPacing(
            settings.fetch_interval_ms,
            settings.fetch_pacing_from_per_s,
            target_records=settings.fetch_target_records,
            max_interval_ms=max(settings.fetch_interval_ms, settings.fetch_interval_max_ms),
        )
        self._keys = keys
        self._admission = admission
        self._partitions = partitions
        self._open = open_unit
        self._stats = stats
        self._metrics = metrics
        self._readiness = readiness
        self._held = held
        self._fetched = fetched
        self._tick = tick
        self._released = released
        """Set when held records are let go (a commit ended): while paused, the intake waits on it
        instead of fetching from paused partitions, which waits out the whole fetch timeout."""
        self._paused = False  # by backpressure
        self.keyring: KeyRing = keys.current()
        """The ring the last fetch's records were admitted with (the key file's as of that fetch)."""

    async def run(self) -> None:
        """Fetch and admit until cancelled (a fetch or a seek may stop anywhere: nothing of it is
        committed state)."""
        while True:
            wait_s = self._pacing.wait_s(time.monotonic())
            if wait_s > 0 and not self._paused:
                await self._paced(wait_s)
            await self._partitions.position_new()
            self._apply_backpressure()
            if self._paused and self._released is not None:
                await self._await_release()
                continue
            room = max(1, min(self._max_records, self._max_in_flight - self._held()))
            fetched = await self._consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS, max_records=room)
            count = sum(map(len, fetched.values()))
            self._pacing.fetched(count, time.monotonic())
            self._stats.fetches += bool(count)
            self._tick()
            # One stat: a rotated key, an enrolment or a forgotten device in the key file applies from
            # here. After the fetch, so a record written after a key file change is never opened with
            # the ring from before it.
            self.keyring = self._keys.current()
            self._admit_all(fetched)
            self._metrics.set_in_flight(self._held())
            if fetched:
                self._fetched()
            elif self._held() == 0:
                self._readiness.progress()  # idle, not stuck

    async def _await_release(self) -> None:
        """Paused by backpressure: wait until a commit lets records go (at most a fetch timeout, so the
        periodic chores of ``tick`` still run), then look again. A fetch from the paused partitions
        would return nothing only after the whole timeout: a drain of a backlog spent up to 100 ms of
        each pause idle with nothing held (``bench/pipeline/capacity.py``, 2026-12-06)."""
        assert self._released is not None
        self._released.clear()
        if self._held() > self._max_in_flight // 2:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), FETCH_TIMEOUT_MS / 1000.0)
        self._tick()

    async def _paced(self, wait_s: float) -> None:
        """Wait ``wait_s`` with the partitions paused (``pacing.py``): no fetch of the first record to
        arrive meanwhile, so the next fetch takes all of them. Called right after a fetch returned (no
        await between), before aiokafka's fetcher could send the next one."""
        paused = self._consumer.assignment() - self._consumer.paused()
        self._consumer.pause(*paused)
        self._stats.paced += 1
        try:
            await asyncio.sleep(wait_s)
        finally:  # a rebalance meanwhile may have revoked some
            self._consumer.resume(*(paused & self._consumer.assignment()))

    def _admit_all(self, fetched: Mapping[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        """Admit the records fetched for partitions in service into the open unit."""
        now_s = time.monotonic()
        now_ms = time.time() * 1000.0
        admitted = 0
        self._admission.new_fetch()
        for tp, records in fetched.items():
            self._metrics.lag.fetched(tp, records[-1].timestamp)
            epoch = self._partitions.serving.get(tp)
            if epoch is None:
                continue  # revoked, or waiting to be positioned at its committed offset: read again then
            fresh = self._partitions.unseen(tp, records)
            self._stats.refetched += len(records) - len(fresh)
            for record in fresh:
                self._stats.consumed += 1
                item, deadline_s = self._admission.admit(tp, epoch, record, self.keyring, now_s, now_ms)
                self._open.add(item, now_s=now_s, deadline_s=deadline_s)
            admitted += len(fresh)
        self._metrics.consumed(admitted)

    def _apply_backpressure(self) -> None:
        """Pause every partition while ``max_in_flight`` records are held; resume at half."""
        held, limit = self._held(), self._max_in_flight
        if held >= limit and not self._paused:
            self._paused = True
            self._stats.pauses += 1
            self._metrics.set_paused(True)
            log.info("pausing partitions: %d records held (limit %d)", held, limit)
        elif self._paused and held <= limit // 2:
            self._consumer.resume(*self._consumer.assignment())
            self._paused = False
            self._metrics.set_paused(False)
            log.info("resumed partitions: %d records held", held)
        if self._paused:  # partitions assigned since the pause start unpaused
            self._consumer.pause(*self._consumer.assignment())
