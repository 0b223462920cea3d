"""Consumer lag per input partition, in records and in seconds, updated on a timer.

Records: the partition's end as the consumer last saw it (its last stable offset under read_committed,
else its high watermark: both come with every fetch response, nothing is asked of the broker) minus the
consumer's position (the next offset it hands out). Seconds: the age of the oldest record not yet
consumed, the one at the position. Its timestamp is not known until it is fetched, so it is bounded:

* it was in the log when the end was first seen past its offset: each update keeps (end, time first
  seen) when the end moves, for the last :data:`HISTORY` moves, and the record's age is at least
  ``now - `` that time (an update interval late at most). An idle partition that receives a record
  reads about 0, never the time since its previous record;
* when the record is older than that history (a backlog from before the process started, or a long
  one), the Kafka timestamp of the last record fetched from the partition stands in: the next record is
  no older than it, and in a backlog it is its neighbour.

0 when caught up. The timer costs one pass over the assigned partitions per interval; the hot path
costs one dictionary store per partition and fetch (:meth:`ConsumerLag.fetched`). Kafka timestamps are
the producer's (CreateTime: the device's clock for ingest records); a negative age reads 0.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry, Gauge

from edgestream.pipeline.observability.catalogue import CONSTANT_LABELS, LAG_RECORDS, LAG_SECONDS

log = logging.getLogger(__name__)

HISTORY = 64
"""Moves of a partition's end remembered (with the time each was first seen)."""
INTERVAL_S = 1.0
"""Default time between two updates."""


class Offsets(NamedTuple):
    """Where a consumer stands on one partition."""

    position: int
    """The next offset it hands out."""
    end: int
    """The partition's end as last fetched (LSO under read_committed, else the high watermark)."""


class _Partition:
    """One partition's series and what its age estimate needs."""

    __slots__ = ("ends", "records", "seconds")

    def __init__(self, records: Any, seconds: Any) -> None:
        self.records = records
        self.seconds = seconds
        self.ends: deque[tuple[int, float]] = deque(maxlen=HISTORY)  # (end, ms first seen), ascending


class ConsumerLag:
    """The lag gauges of one consumer's partitions, in ``registry``."""

    def __init__(self, registry: CollectorRegistry, constant_values: tuple[str, str]) -> None:
        labels = (*CONSTANT_LABELS, "topic", "partition")
        self._records = Gauge(
            LAG_RECORDS, "Records of an input partition not yet consumed.", labels, registry=registry
        )
        self._seconds = Gauge(
            LAG_SECONDS,
            "Age of the oldest record of an input partition not yet consumed (a lower bound within one "
            "update interval); 0 when caught up.",
            labels,
            registry=registry,
        )
        self._values = constant_values
        self._partitions: dict[TopicPartition, _Partition] = {}
        self._last_fetched_ms: dict[TopicPartition, float] = {}

    def fetched(self, tp: TopicPartition, last_timestamp_ms: float) -> None:
        """Records of ``tp`` were fetched; the last one's Kafka timestamp is ``last_timestamp_ms``."""
        self._last_fetched_ms[tp] = last_timestamp_ms

    def update(self, offsets: Mapping[TopicPartition, Offsets | None], now_ms: float) -> None:
        """Set each partition's lag from ``offsets`` (None: not known yet, the series keeps its value);
        the series of partitions not in ``offsets`` (no longer assigned) are removed."""
        for tp in [tp for tp in self._partitions if tp not in offsets]:
            del self._partitions[tp]
            self._last_fetched_ms.pop(tp, None)
            labels = (*self._values, tp.topic, str(tp.partition))
            self._records.remove(*labels)
            self._seconds.remove(*labels)
        for tp, where in offsets.items():
            part = self._partitions.get(tp)
            if part is None:
                labels = (*self._values, tp.topic, str(tp.partition))
                part = _Partition(self._records.labels(*labels), self._seconds.labels(*labels))
                self._partitions[tp] = part
            if where is None:
                continue
            if not part.ends or part.ends[-1][0] != where.end:
                part.ends.append((where.end, now_ms))
            behind = max(0, where.end - where.position)
            part.records.set(behind)
            part.seconds.set(self._age_s(tp, part, where.position, now_ms) if behind else 0.0)

    def _age_s(self, tp: TopicPartition, part: _Partition, position: int, now_ms: float) -> float:
        """Age of the record at ``position`` (see the module's docstring)."""
        ends = part.ends
        if ends[0][0] <= position:  # the history saw the end at or before it: it appeared after
            seen_ms = next(ms for end, ms in ends if end > position)
        else:
            seen_ms = ends[0][1]
            fetched_ms = self._last_fetched_ms.get(tp)
            if fetched_ms is not None:
                seen_ms = min(seen_ms, fetched_ms)
        return max(0.0, (now_ms - seen_ms) / 1000.0)

    async def watch(
        self, offsets: Callable[[], Mapping[TopicPartition, Offsets | None]], interval_s: float = INTERVAL_S
    ) -> None:
        """Update from ``offsets()`` every ``interval_s`` until cancelled; an update that fails is
        logged and the next one tried (lag is never a reason to stop a process)."""
        warned = False
        while True:
            try:
                self.update(offsets(), time.time() * 1000.0)
            except Exception:  # the first failure is a warning: lag that never updates must show
                level = logging.DEBUG if warned else logging.WARNING
                log.log(level, "consumer lag not updated", exc_info=True)
                warned = True
            await asyncio.sleep(interval_s)


def consumer_offsets(consumer: Any) -> dict[TopicPartition, Offsets | None]:
    """Position and end of each partition assigned to an ``AIOKafkaConsumer``, read from its fetch
    state without a request or an await (the public ``position()`` is a coroutine that may wait for a
    reset, ``highwater()`` is not); None where either is not known yet. Safe to call from another
    thread than the consumer's (faust runs its consumer in a thread of its own): plain attribute
    reads."""
    subscription = consumer._subscription.subscription
    assignment = None if subscription is None else subscription.assignment
    if assignment is None:
        return {}
    out: dict[TopicPartition, Offsets | None] = {}
    for tp in list(assignment.tps):
        out[tp] = _offsets(assignment.state_value(tp))
    return out


def _offsets(state: Any) -> Offsets | None:
    if state is None or not state.has_valid_position or state.highwater is None:
        return None
    lso = state.lso
    end = lso if lso is not None and lso >= 0 else state.highwater
    return Offsets(state.position, end)
