"""Steady traffic into a region's ingest topics, and what its consumer group has committed so far."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from bench.faults import wire
from bench.faults.corpus import Corpus
from bench.faults.env import FaultRegion, FaultTimeout, wait_for
from bench.faults.records import CorpusRecord
from edgestream.pipeline import kafka
from edgestream.pipeline.contract.partitioner import partition_for
from edgestream.topics.catalogue import parse_topic

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 120.0
"""After traffic stops, how long the group may take to commit past everything produced."""


COMPRESSED_UP_TO: Final = 16 * 1024
"""Largest record value a compressing `Traffic` sends compressed."""


class Traffic:
    """Produces records from ``source`` at a steady rate until stopped or the source runs dry.

    Every record drawn is kept in ``ledger`` by test id before it is sent; sends whose delivery failed
    are in ``failed`` (the checker reads the ingest topics to learn what was really written).
    """

    def __init__(
        self,
        region: FaultRegion,
        source: Iterator[CorpusRecord],
        *,
        rate_per_s: float,
        ledger: dict[int, CorpusRecord] | None = None,
        compression: str | None = None,
    ) -> None:
        """``compression``: the codec the producer compresses its batches with (None: none), as a
        device's Kafka client may; records built byte by byte (``raw_headers``) and records over
        `COMPRESSED_UP_TO` go uncompressed, through a producer of their own (a record sized to the
        broker's limit outgrows it compressed, and the idempotent producer's refused batch broke the
        sequence of every later one on its partition: 1,818 records of the poison scenario were lost
        that way)."""
        self.region = region
        self.ledger: dict[int, CorpusRecord] = {} if ledger is None else ledger
        self.failed: set[int] = set()
        self.rate_per_s = rate_per_s
        self.exhausted = asyncio.Event()
        self._source = source
        self._stop = asyncio.Event()
        self._deliveries: list[tuple[int, asyncio.Future[Any]]] = []
        self._producer: AIOKafkaProducer | None = None
        self._plain: AIOKafkaProducer | None = None
        self._compression = compression
        self._task: asyncio.Task[None] | None = None

    @property
    def sent(self) -> int:
        return len(self.ledger)

    async def __aenter__(self) -> Traffic:
        self._producer = kafka.producer(
            self.region.bootstrap,
            "faults-traffic",
            linger_ms=5,
            max_request_size=4 << 20,
            compression_type=self._compression,
        )
        await self._producer.start()
        if self._compression is not None:
            self._plain = kafka.producer(
                self.region.bootstrap, "faults-traffic-plain", linger_ms=5, max_request_size=4 << 20
            )
            await self._plain.start()
        self._task = asyncio.create_task(self._run(), name="traffic")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _run(self) -> None:
        producer = self._producer
        assert producer is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        n = 0
        while not self._stop.is_set():
            due = started + n / self.rate_per_s
            now = loop.time()
            if due > now:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), due - now)
                continue
            if now - due > 1.0:  # fell behind (the broker was away): keep the rate, do not burst
                started, n = now, 0
            record = next(self._source, None)
            if record is None:
                self.exhausted.set()
                return
            self.ledger[record.test_id] = record
            try:
                if record.raw_headers:
                    await self._send_raw(producer, record)
                else:
                    big = self._plain is not None and len(record.value) > COMPRESSED_UP_TO
                    delivery = await (self._plain if big and self._plain else producer).send(
                        record.topic(self.region.name),
                        record.value,
                        key=record.key,
                        partition=record.partition,
                    )
                    self._deliveries.append((record.test_id, delivery))
            except KafkaError as err:
                log.warning("send of test id %d failed: %r", record.test_id, err)
                self.failed.add(record.test_id)
            n += 1

    async def _send_raw(self, producer: AIOKafkaProducer, record: CorpusRecord) -> None:
        """``record`` as a batch of its own, built byte by byte and produced as it is (acks=all)."""
        topic = record.topic(self.region.name)
        partition = record.partition
        if partition is None:
            partition = partition_for(record.key, parse_topic(topic).spec.partitions)
        raw = wire.batch([(record.key, record.value, record.raw_headers)])
        try:
            await wire.produce_raw(producer, TopicPartition(topic, partition), raw)
        except RuntimeError as err:  # the broker refused it
            raise KafkaError(str(err)) from err

    async def stop(self) -> None:
        """Stop drawing, wait for every delivery (failed ones go to ``failed``), stop the producer."""
        if self._task is None:
            return
        self._stop.set()
        task, self._task = self._task, None
        try:
            await task
            outcomes = await asyncio.gather(*(d for _, d in self._deliveries), return_exceptions=True)
            for (test_id, _), outcome in zip(self._deliveries, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    self.failed.add(test_id)
        finally:
            for client in (self._producer, self._plain):
                if client is not None:
                    await client.stop()


def good_traffic(corpus: Corpus) -> Iterator[CorpusRecord]:
    """Endless good records from the corpus's devices."""
    while True:
        yield corpus.good()


# -- observing the group --------------------------------------------------------------------------


class GroupProbe:
    """Committed offsets of the region's group on its ingest partitions (None while the broker is away)."""

    def __init__(self, region: FaultRegion) -> None:
        self.region = region
        self._admin = kafka.admin(region.bootstrap, "faults-probe", request_timeout_ms=5_000)

    async def __aenter__(self) -> GroupProbe:
        await self._admin.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._admin.close()

    async def committed(self) -> dict[TopicPartition, int] | None:
        try:
            offsets = await self._admin.list_consumer_group_offsets(
                self.region.group, partitions=self.region.ingest
            )
        except (KafkaError, OSError, TimeoutError) as err:
            log.debug("committed offsets unavailable: %r", err)
            return None
        return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}

    async def total(self) -> int:
        """Sum of committed offsets (-1 while they cannot be read)."""
        committed = await self.committed()
        return -1 if committed is None else sum(committed.values())

    async def progress(self, what: str, timeout_s: float = 60.0, partitions: Iterable[str] = ()) -> None:
        """Wait until the group commits past where it is now (on ``partitions``, named as the worker
        logs them, or on any ingest partition)."""
        wanted = set(partitions)

        def pick(committed: Mapping[TopicPartition, int]) -> int:
            return sum(
                v for tp, v in committed.items() if not wanted or f"{tp.topic}[{tp.partition}]" in wanted
            )

        start: int | None = None

        async def moved() -> bool:
            nonlocal start
            committed = await self.committed()
            if committed is None:
                return False
            if start is None:
                start = pick(committed)
                return False
            return pick(committed) > start

        await wait_for(what, moved, timeout_s, 0.2)


async def region_lag(region: FaultRegion) -> int | None:
    """Records on the ingest topics past the group's committed offsets (None while unreadable)."""
    settings = region.bootstrap.model_copy(update={"request_timeout_ms": 10_000})
    try:
        lag = await kafka.consumer_lag(settings, region.group, region.ingest, client_id="faults-probe")
    except (KafkaError, OSError, TimeoutError) as err:
        log.debug("lag unavailable: %r", err)
        return None
    return sum(lag.values())


async def wait_drained(region: FaultRegion, timeout_s: float = DRAIN_TIMEOUT_S, max_lag: int = 0) -> None:
    """Wait until the group's lag on the ingest topics is at most ``max_lag`` (0: drained)."""
    last: int | None = None

    async def drained() -> bool:
        nonlocal last
        last = await region_lag(region)
        return last is not None and last <= max_lag

    try:
        await wait_for(f"group {region.group} lag <= {max_lag}", drained, timeout_s, 0.25)
    except FaultTimeout as err:
        raise FaultTimeout(f"{err}; lag {last}") from None
