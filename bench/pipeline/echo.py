"""The echo floor: ``python -m bench.pipeline echo``, the far side of Kafka without the pipeline's work."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from bench.pipeline.settings import ECHO_GROUP, ECHO_REGION
from edgestream.pipeline import eventloop, heap, kafka
from edgestream.pipeline.heap import freeze_startup_heap
from edgestream.pipeline.settings import KafkaSettings
from edgestream.topics.catalogue import KINDS, ingest_topic
from edgestream.workers.local.fleet import answers_topic

_CLIENT_ID = "edgestream-bench-echo"


class EchoSettings(BaseSettings):
    """Settings of ``python -m bench.pipeline echo`` (``EDGESTREAM_ECHO_*``)."""

    model_config = SettingsConfigDict(
        env_prefix="EDGESTREAM_ECHO_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    region: str = ECHO_REGION
    """Consumes ``edge.<region>.ingest.*`` and republishes to where the region's devices read answers."""
    kafka: KafkaSettings = KafkaSettings()
    """How to reach the brokers."""
    fetch_max_records: int = Field(default=500, ge=1)
    """Upper bound on records returned by one ``getmany`` (the worker's default)."""
    commit_interval_ms: int = Field(default=100, ge=1)
    """At-least-once: how often acknowledged positions are committed (the worker's default)."""
    transactional: bool = False
    """Exactly-once, as the worker does it: rounds of transactions, one per input partition (a
    transactional producer each) holding its echoes and consumed offset; fetching goes on meanwhile."""
    freeze_heap: bool = True
    """Freeze the start-up heap once the clients are started, as the edge worker does
    (``pipeline/heap.py``): the floor is measured without collector pauses the worker does not have."""
    ready_file: Path | None = None
    """Written once partitions are assigned; removed at exit."""
    stats_file: Path | None = None
    """Written (JSON) at exit: counters and one-hop samples."""


class _ReadyOnAssign(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, path: Path | None) -> None:
        self._path = path

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if self._path is None or not assigned:
            return
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "partitions": len(assigned)}))
        tmp.replace(self._path)


class EchoWorker:
    """The Kafka-only floor: consume a batch, republish each record unchanged, make it durable.

    Client settings are the edge worker's (read_committed, fetch_max_wait_ms 20, acks=all, idempotence,
    linger 0; at-least-once: offsets committed every 100 ms once the echoes are acknowledged;
    exactly-once: a transaction per input partition), so what differs from the pipeline is the work
    between the hops.
    """

    def __init__(self, settings: EchoSettings) -> None:
        self.settings = settings
        self._out_topic = answers_topic(settings.region)
        self._consumer = kafka.consumer(
            settings.kafka,
            _CLIENT_ID,
            group_id=ECHO_GROUP,
            fetch_max_wait_ms=20,
            max_poll_records=settings.fetch_max_records,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=2_000,
        )
        self._producer = None if settings.transactional else kafka.producer(settings.kafka, _CLIENT_ID)
        self._tx_producers: dict[TopicPartition, AIOKafkaProducer] = {}
        self._buffer: dict[TopicPartition, list[Any]] = {}
        self._has_work = asyncio.Event()
        self._closing = False
        self._unacked: list[tuple[asyncio.Future[list[Any]], dict[TopicPartition, int]]] = []
        self._acked: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self.echoed = 0
        self.fetch_sizes: Counter[int] = Counter()
        self.one_hop: list[tuple[int, float]] = []
        """(producer timestamp ms, ms from that timestamp to consumed) per record."""

    async def run(self, stop: asyncio.Event) -> None:
        """Echo until ``stop`` is set, then make every echo durable and return."""
        if self._producer is not None:
            await self._producer.start()
        try:
            topics = [ingest_topic(self.settings.region, kind) for kind in KINDS]
            self._consumer.subscribe(topics, listener=_ReadyOnAssign(self.settings.ready_file))
            await self._consumer.start()
            freeze_startup_heap("echo")  # a no-op unless this process enabled it (its main)
            try:
                await self._loop(stop)
            finally:
                await self._consumer.stop()
        finally:
            producers = [
                *([self._producer] if self._producer is not None else []),
                *self._tx_producers.values(),
            ]
            await asyncio.gather(*(p.stop() for p in producers), return_exceptions=True)
            self._write_stats()
            if self.settings.ready_file is not None:
                self.settings.ready_file.unlink(missing_ok=True)

    async def _loop(self, stop: asyncio.Event) -> None:
        if self._producer is None:
            await self._loop_in_transactions(stop)
        else:
            await self._loop_acked(stop, self._producer)

    async def _fetch(self) -> dict[TopicPartition, list[Any]]:
        fetched: dict[TopicPartition, list[Any]] = await self._consumer.getmany(
            timeout_ms=100, max_records=self.settings.fetch_max_records
        )
        now_ms = time.time() * 1000.0
        count = 0
        for records in fetched.values():
            count += len(records)
            self.one_hop.extend((r.timestamp, now_ms - r.timestamp) for r in records)
        if count:
            self.echoed += count
            self.fetch_sizes[count] += 1
        return fetched

    async def _loop_acked(self, stop: asyncio.Event, producer: AIOKafkaProducer) -> None:
        """At-least-once: send each fetched batch at once; commit acknowledged positions every 100 ms."""
        committer = asyncio.create_task(self._commit_loop())
        try:
            while not stop.is_set():
                fetched = await self._fetch()
                futures: list[asyncio.Future[Any]] = []
                positions: dict[TopicPartition, int] = {}
                for tp, records in fetched.items():
                    for record in records:
                        futures.append(await self._send(producer, record))
                    positions[tp] = records[-1].offset + 1
                if futures:
                    self._unacked.append((asyncio.gather(*futures), positions))
                if committer.done():
                    committer.result()  # raises what ended it
        finally:
            committer.cancel()
            await asyncio.gather(committer, return_exceptions=True)
        for future, positions in self._unacked:
            await future
            self._acked.update(positions)
        self._unacked.clear()
        await self._commit()

    async def _loop_in_transactions(self, stop: asyncio.Event) -> None:
        """Exactly-once, as the worker: fetching goes on while a round of transactions commits, and the
        next round takes everything fetched meanwhile (one transaction per input partition)."""
        publisher = asyncio.create_task(self._publish_loop())
        try:
            while not stop.is_set():
                for tp, records in (await self._fetch()).items():
                    self._buffer.setdefault(tp, []).extend(records)
                    self._has_work.set()
                if publisher.done():
                    publisher.result()  # raises what ended it
        finally:
            self._closing = True
            self._has_work.set()
            await publisher  # publishes what is still buffered, then returns

    async def _publish_loop(self) -> None:
        while True:
            if not self._buffer:
                if self._closing:
                    return
                await self._has_work.wait()
                self._has_work.clear()
                continue
            work, self._buffer = self._buffer, {}
            await asyncio.gather(*(self._echo_in_transaction(tp, records) for tp, records in work.items()))

    async def _send(self, producer: AIOKafkaProducer, record: Any) -> asyncio.Future[Any]:
        headers = list(record.headers) or None
        future: asyncio.Future[Any] = await producer.send(
            self._out_topic, record.value, key=record.key, headers=headers
        )
        return future

    async def _echo_in_transaction(self, tp: TopicPartition, records: Sequence[Any]) -> None:
        producer = self._tx_producers.get(tp)
        if producer is None:
            producer = kafka.producer(
                self.settings.kafka,
                _CLIENT_ID,
                transactional_id=f"{ECHO_GROUP}-{tp.topic}-{tp.partition}",
                retry_backoff_ms=5,  # as the worker: the next transaction's first request often retries
            )
            await producer.start()
            self._tx_producers[tp] = producer
        await producer.begin_transaction()
        deliveries = [await self._send(producer, record) for record in records]
        await producer.send_offsets_to_transaction({tp: records[-1].offset + 1}, ECHO_GROUP)
        await producer.commit_transaction()
        await asyncio.gather(*deliveries)

    async def _commit_loop(self) -> None:
        interval_s = self.settings.commit_interval_ms / 1000.0
        while True:
            await asyncio.sleep(interval_s)
            await self._commit()

    async def _commit(self) -> None:
        while self._unacked and self._unacked[0][0].done():
            future, positions = self._unacked.pop(0)
            future.result()  # a produce that failed after the client's retries ends the run
            self._acked.update(positions)
        due = {tp: pos for tp, pos in self._acked.items() if self._committed.get(tp) != pos}
        if due:
            await self._consumer.commit(due)
            self._committed.update(due)

    def _write_stats(self) -> None:
        path = self.settings.stats_file
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        stats = {
            "echoed": self.echoed,
            "transactional": self.settings.transactional,
            "fetch_sizes": {str(k): v for k, v in sorted(self.fetch_sizes.items())},
            "one_hop": [[ts, round(ms, 3)] for ts, ms in self.one_hop],
        }
        path.write_text(json.dumps(stats))


def run_echo_process(settings: EchoSettings) -> None:
    """The echo process's main: run until SIGTERM or SIGINT."""

    if settings.freeze_heap:
        heap.enable()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await EchoWorker(settings).run(stop)

    eventloop.run(main(), "uvloop")  # as the edge worker's: the comparison is of the pipelines, not the loops
