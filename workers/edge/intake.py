"""The worker's first loop: fetch, and admit what was fetched into the open unit.

Each turn: wait out the pacing interval under load (``pacing.py``), position the partitions assigned
or rewound since the last turn at their committed offsets (``positioning.py``), fetch nothing while
``max_in_flight`` records are held (fetched, not yet committed) and again at half (while paused it
waits for a commit to end), fetch (``fetching.py``: the worker's own requests), take
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

from aiokafka import TopicPartition

from edgestream.pipeline.observability.health import Readiness
from edgestream.pipeline.observability.metrics import WorkerMetrics
from edgestream.pipeline.security.keyring import KeyRing
from edgestream.pipeline.security.keysource import KeyFileWatcher
from edgestream.pipeline.serving.batching import MicroBatcher
from edgestream.workers.edge.admission import Admission, Item
from edgestream.workers.edge.fetching import Fetches
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
        fetches: Fetches,
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
        self._fetches = fetches
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
        """Set when held records are let go (a commit ended): while paused, the intake waits on it."""
        self._paused = False  # by backpressure
        self.keyring: KeyRing = keys.current()
        """The ring the last fetch's records were admitted with (the key file's as of that fetch)."""

    async def run(self) -> None:
        """Fetch and admit until cancelled (a fetch or a seek may stop anywhere: nothing of it is
        committed state)."""
        while True:
            wait_s = self._pacing.wait_s(time.monotonic())
            if wait_s > 0 and not self._paused:
                # Under load: the next fetch takes everything that arrived meanwhile (``pacing.py``).
                self._stats.paced += 1
                await asyncio.sleep(wait_s)
            await self._partitions.position_new()
            self._apply_backpressure()
            if self._paused:
                await self._await_release()
                continue
            room = max(1, min(self._max_records, self._max_in_flight - self._held()))
            fetched = await self._fetches.fetch(FETCH_TIMEOUT_MS / 1000.0, room)
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
        periodic chores of ``tick`` still run), then look again. Nothing is fetched meanwhile: a drain
        of a backlog once spent up to 100 ms of each pause waiting on a fetch from paused partitions
        with nothing held (``bench/pipeline/capacity.py``, 2026-12-06)."""
        timeout_s = FETCH_TIMEOUT_MS / 1000.0
        if self._released is None:
            await asyncio.sleep(timeout_s)
        else:
            self._released.clear()
            if self._held() > self._max_in_flight // 2:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._released.wait(), timeout_s)
        self._tick()

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
        """Fetch nothing while ``max_in_flight`` records are held; fetch again at half."""
        held, limit = self._held(), self._max_in_flight
        if held >= limit and not self._paused:
            self._paused = True
            self._stats.pauses += 1
            self._metrics.set_paused(True)
            log.info("pausing fetches: %d records held (limit %d)", held, limit)
        elif self._paused and held <= limit // 2:
            self._paused = False
            self._metrics.set_paused(False)
            log.info("resumed fetches: %d records held", held)
