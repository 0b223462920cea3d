"""What a backend runs: a typed, at-least-once subscriber to a region's results and dead letters.

A backend connects as ``backend-<region>`` (``docs/contract.md``, "Backends") and consumes
``edge.<region>.results`` and, when asked, ``edge.<region>.dlq`` in a consumer group of its own,
``edgestream-backend-<region>.<name>``, with the project's consumer (``read_committed``, manual commits:
:func:`edgestream.pipeline.kafka.consumer`). Each record is decoded into a
:class:`~edgestream.pipeline.contract.records.ResultRecord` or a
:class:`~edgestream.pipeline.contract.deadletter.DeadLetter` and handed to an async handler; a fetched
batch's offsets are committed only after the handler has returned for every record of it, so a crash
re-delivers what was not handled (at least once). Duplicates the backend would then see again (a record
read twice after a rebalance) are dropped by request id (results) or by the dead letter's origin and
attempt, within a bounded memory of the most recent ones. A record that does not decode goes to the
error callback and is committed past: no record's content stops the subscriber, and neither does a
commit that a rebalance refused. A handler that raises stops it, after committing what was handled
before.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeAlias

from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from edgestream.pipeline import kafka
from edgestream.pipeline.contract.deadletter import DeadLetter
from edgestream.pipeline.contract.records import ResultRecord
from edgestream.pipeline.errors import EdgestreamError, UndecodableRecord
from edgestream.topics.catalogue import backend_group, dlq_topic, results_topic

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

    from edgestream.pipeline.settings import KafkaSettings

log = logging.getLogger(__name__)

Decoded: TypeAlias = ResultRecord | DeadLetter
"""What the handler receives: a result, or a dead letter (when the subscriber reads the DLQ)."""
Handler: TypeAlias = Callable[[Decoded], Awaitable[None]]
"""Called once per new record; the record's offset is committed after it returns."""
ErrorCallback: TypeAlias = Callable[["ConsumerRecord[bytes, bytes]", EdgestreamError], Awaitable[None]]
"""Called with a record that did not decode and why; the subscriber then commits past it."""

DEFAULT_REMEMBERED: Final = 100_000
"""Delivery keys remembered to drop duplicates (request ids, dead-letter origins): about 15 MB."""
FETCH_TIMEOUT_MS: Final = 500
"""How long one fetch waits for records before the stop event is looked at again."""
MAX_RECORDS: Final = 500
"""Most records one fetch returns (one commit per fetch)."""


class BatchConsumer(Protocol):
    """What the subscriber needs of a started consumer (aiokafka's ``AIOKafkaConsumer`` has it)."""

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = ..., max_records: int | None = ...
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]: ...

    async def commit(self, offsets: dict[TopicPartition, int] | None = ...) -> None: ...


class SeenIds:
    """The ``capacity`` most recently handled delivery keys (`delivery_key`). Bounded memory."""

    def __init__(self, capacity: int = DEFAULT_REMEMBERED) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self._capacity = capacity
        self._seen: OrderedDict[object, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, key: object) -> bool:
        return key in self._seen

    def add(self, key: object) -> None:
        """Remember ``key`` as the most recent; the oldest is forgotten past the capacity."""
        self._seen[key] = None
        self._seen.move_to_end(key)
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)


@dataclass(slots=True)
class SubscriberStats:
    """What the subscriber did, for the backend's own metrics and for tests."""

    handled: int = 0
    """Records the handler returned for."""
    duplicates: int = 0
    """Records dropped as already handled."""
    undecodable: int = 0
    """Records sent to the error callback."""
    commits: int = 0
    """Offset commits made."""
    commit_failures: int = 0
    """Commits refused because a rebalance moved the partitions (their records come again)."""


def decode(record: ConsumerRecord[bytes, bytes], dlq: str) -> Decoded:
    """The record as a dead letter when it comes from ``dlq``, else as a result record. Raises
    :class:`EdgestreamError` (never anything else) for a record that does not decode."""
    try:
        if record.topic == dlq:
            return DeadLetter.from_record(record)
        if record.value is None:
            raise UndecodableRecord("a result record without a value")
        return ResultRecord.from_bytes(record.value)
    except EdgestreamError:
        raise
    except Exception as e:  # a parser bug must not stop a backend either
        raise UndecodableRecord(f"not decodable: {type(e).__name__}") from e


def delivery_key(decoded: Decoded) -> object:
    """What makes two deliveries the same: a result's request id; a dead letter's origin and attempt."""
    if isinstance(decoded, ResultRecord):
        return decoded.request_id
    return (decoded.origin_position(), decoded.attempt)


async def _log_error(record: ConsumerRecord[bytes, bytes], error: EdgestreamError) -> None:
    log.warning(
        "skipped %s[%d]@%d (%s): %s", record.topic, record.partition, record.offset, error.reason, error
    )


class ResultSubscriber:
    """Reads decoded results (and dead letters) with a started consumer; see the module docstring."""

    def __init__(
        self,
        consumer: BatchConsumer,
        region: str,
        handler: Handler,
        *,
        on_error: ErrorCallback = _log_error,
        remembered: int = DEFAULT_REMEMBERED,
    ) -> None:
        self._consumer = consumer
        self._dlq = dlq_topic(region)
        self._handler = handler
        self._on_error = on_error
        self._seen = SeenIds(remembered)
        self.stats = SubscriberStats()
        """Counts since this subscriber was made."""

    @staticmethod
    def topics(region: str, *, dead_letters: bool = True) -> list[str]:
        """The topics a backend of ``region`` subscribes to."""
        return [results_topic(region), *([dlq_topic(region)] if dead_letters else [])]

    async def poll(self, timeout_ms: int = FETCH_TIMEOUT_MS) -> int:
        """Fetch once, handle what came, commit it; the number of records fetched."""
        batch = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=MAX_RECORDS)
        done: dict[TopicPartition, int] = {}
        try:
            for tp, records in batch.items():
                for record in records:
                    await self._one(record)
                    done[tp] = record.offset + 1
        finally:
            if done:  # what was handled, also when a handler raised after it
                await self._commit(done)
        return sum(len(records) for records in batch.values())

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as e:
            # A rebalance took partitions away: their new owner reads those records again (at least
            # once; its duplicates are its own to drop), and this subscriber goes on with what it has.
            self.stats.commit_failures += 1
            log.warning("could not commit %s after a rebalance: %s", sorted(map(str, offsets)), e)
            return
        self.stats.commits += 1

    async def _one(self, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            decoded = decode(record, self._dlq)
        except EdgestreamError as error:
            self.stats.undecodable += 1
            await self._on_error(record, error)
            return
        key = delivery_key(decoded)
        if key in self._seen:
            self.stats.duplicates += 1
            return
        await self._handler(decoded)
        self._seen.add(key)  # only once handled: a record whose handler raised is not a duplicate later
        self.stats.handled += 1

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set (then return after the fetch in flight is handled)."""
        while not stop.is_set():
            await self.poll()


async def subscribe(
    kafka_settings: KafkaSettings,
    region: str,
    name: str,
    handler: Handler,
    stop: asyncio.Event,
    *,
    dead_letters: bool = True,
    on_error: ErrorCallback = _log_error,
    remembered: int = DEFAULT_REMEMBERED,
    **options: Any,
) -> SubscriberStats:
    """Run a subscriber as ``kafka_settings``' identity (``backend-<region>``) in group
    ``edgestream-backend-<region>.<name>`` until ``stop`` is set; its stats. ``options`` go to
    :func:`edgestream.pipeline.kafka.consumer`."""
    group = backend_group(region, name)
    client = kafka.consumer(kafka_settings, f"backend-{region}-{name}", group_id=group, **options)
    async with kafka.started(client) as consumer:
        consumer.subscribe(ResultSubscriber.topics(region, dead_letters=dead_letters))
        subscriber = ResultSubscriber(consumer, region, handler, on_error=on_error, remembered=remembered)
        await subscriber.run(stop)
        return subscriber.stats
