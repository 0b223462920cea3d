"""The worker's own fetches (``workers/edge/fetching.py``) against the real broker: read_committed as
aiokafka reads it, records handed out in order and at most as many as asked, seeks, a partition
positioned during a long poll, an offset out of range, the lag's offsets."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import NewTopic, RecordsToDelete
from aiokafka.errors import GroupAuthorizationFailedError, TopicAuthorizationFailedError
from confluent_kafka import Producer

from edgestream.pipeline import kafka
from edgestream.pipeline.observability.lag import Offsets
from edgestream.pipeline.security.identities import Identity
from edgestream.pipeline.settings import KafkaSettings
from edgestream.topics.acl_admin import apply_policy
from edgestream.topics.admin import ensure_topics
from edgestream.topics.catalogue import edge_group, ingest_topic, region_topics
from edgestream.workers.edge.fetching import Fetches, Records, idle_aiokafka_fetcher
from edgestream.workers.local.broker.state import BrokerState
from edgestream.workers.local.rdkafka import rdkafka_config

LONG_POLL_MS = 10_000
"""The broker's wait for an empty fetch in these tests: far longer than any of them waits."""
PATIENCE_S = 5.0


@pytest.fixture
async def topic(bootstrap: KafkaSettings) -> str:
    name = f"fetching-{uuid.uuid4().hex[:10]}"
    async with kafka.started(kafka.admin(bootstrap, "test-fetching-admin")) as admin:
        await admin.create_topics([NewTopic(name, 2, 1)])
    return name


@pytest.fixture
async def consumer(bootstrap: KafkaSettings, topic: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer of the topic's partitions whose own fetcher is idle (all paused), as in the worker."""
    async with kafka.started(kafka.consumer(bootstrap, "test-fetching")) as client:
        tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
        client.assign(tps)
        client.pause(*tps)
        await client._client.force_metadata_update()
        yield client


@pytest.fixture
async def fetches(consumer: AIOKafkaConsumer) -> AsyncIterator[Fetches]:
    fetches = Fetches(consumer, max_wait_ms=LONG_POLL_MS)
    yield fetches
    await fetches.close()


async def _produce(bootstrap: KafkaSettings, tp: TopicPartition, values: list[bytes]) -> None:
    async with kafka.started(kafka.producer(bootstrap, "test-fetching-producer")) as producer:
        for value in values:
            await producer.send(tp.topic, value, partition=tp.partition)
        await producer.flush()


async def _fetch_until(fetches: Fetches, count: int, max_records: int = 500) -> Records:
    """Fetches until ``count`` records came (or patience ran out), per partition in order."""
    got: Records = {}
    deadline = asyncio.get_running_loop().time() + PATIENCE_S
    while sum(map(len, got.values())) < count and asyncio.get_running_loop().time() < deadline:
        for tp, records in (await fetches.fetch(0.2, max_records)).items():
            got.setdefault(tp, []).extend(records)
    return got


async def test_committed_records_come_in_order_and_aborted_ones_never(
    bootstrap: KafkaSettings, topic: str, fetches: Fetches
) -> None:
    tp = TopicPartition(topic, 0)
    txn = kafka.producer(bootstrap, "test-fetching-txn", transactional_id=f"t-{uuid.uuid4().hex}")
    async with kafka.started(txn):
        for values, commit in (([b"a1", b"a2"], True), ([b"b1"], False), ([b"c1"], True)):
            await txn.begin_transaction()
            for value in values:
                await txn.send(topic, value, partition=0)
            if commit:
                await txn.commit_transaction()
            else:
                await txn.abort_transaction()
    await _produce(bootstrap, tp, [b"d1"])
    fetches.seek(tp, 0)

    got = await _fetch_until(fetches, 4)

    assert [r.value for r in got[tp]] == [b"a1", b"a2", b"c1", b"d1"]
    offsets = [r.offset for r in got[tp]]
    assert offsets == sorted(offsets)
    # Four records and three markers: the position is past them all, the lag nothing.
    assert fetches.offsets()[tp] == Offsets(8, 8)
    assert await fetches.fetch(0.05, 500) == {}


@pytest.fixture
async def ten_records(bootstrap: KafkaSettings, topic: str, fetches: Fetches) -> TopicPartition:
    """Partition 0 with ten records (offsets 0-9), fetched from its start."""
    tp = TopicPartition(topic, 0)
    await _produce(bootstrap, tp, [b"%d" % i for i in range(10)])
    fetches.seek(tp, 0)
    return tp


async def test_a_fetch_hands_out_at_most_what_is_asked_and_keeps_the_rest_in_order(
    ten_records: TopicPartition, fetches: Fetches
) -> None:
    tp = ten_records
    first = await _fetch_until(fetches, 4, max_records=4)
    assert [r.offset for r in first[tp]] == [0, 1, 2, 3]
    assert fetches.offsets()[tp] == Offsets(4, 10)  # the rest is buffered: still to be handed out
    rest = await _fetch_until(fetches, 6, max_records=500)
    assert [r.offset for r in rest[tp]] == [4, 5, 6, 7, 8, 9]


async def test_a_seek_drops_what_is_buffered_and_fetches_from_there(
    ten_records: TopicPartition, fetches: Fetches
) -> None:
    tp = ten_records
    assert [r.offset for r in (await _fetch_until(fetches, 2, max_records=2))[tp]] == [0, 1]

    fetches.seek(tp, 7)

    assert [r.offset for r in (await _fetch_until(fetches, 3))[tp]] == [7, 8, 9]


async def test_a_partition_positioned_during_a_long_poll_is_fetched_when_it_returns(
    bootstrap: KafkaSettings, topic: str, consumer: AIOKafkaConsumer
) -> None:
    idle, busy = TopicPartition(topic, 1), TopicPartition(topic, 0)
    fetches = Fetches(consumer, max_wait_ms=300)
    try:
        fetches.seek(idle, 0)
        assert await fetches.fetch(0.01, 500) == {}  # the broker holds this request (up to 300 ms)
        await _produce(bootstrap, busy, [b"x"])

        fetches.seek(busy, 0)

        got = await _fetch_until(fetches, 1)
        assert [r.value for r in got[busy]] == [b"x"]
        assert set(got) == {busy}
    finally:
        await fetches.close()


async def test_a_forgotten_partition_is_no_longer_fetched(
    bootstrap: KafkaSettings, topic: str, fetches: Fetches
) -> None:
    tp, other = TopicPartition(topic, 0), TopicPartition(topic, 1)
    await _produce(bootstrap, tp, [b"a", b"b"])
    await _produce(bootstrap, other, [b"c"])
    fetches.seek(tp, 0)
    fetches.seek(other, 0)
    assert [r.value for r in (await _fetch_until(fetches, 1, max_records=1))[tp]] == [b"a"]

    fetches.forget([tp])

    got = await _fetch_until(fetches, 1)
    assert set(got) == {other}
    assert set(fetches.offsets()) == {other}


async def test_an_offset_out_of_range_restarts_at_the_first_offset(
    bootstrap: KafkaSettings, topic: str, fetches: Fetches
) -> None:
    tp = TopicPartition(topic, 0)
    await _produce(bootstrap, tp, [b"%d" % i for i in range(10)])
    async with kafka.started(kafka.admin(bootstrap, "test-fetching-admin")) as admin:
        await admin.delete_records({tp: RecordsToDelete(before_offset=6)})
    fetches.seek(tp, 2)  # deleted: out of range

    got = await _fetch_until(fetches, 4)

    assert [r.offset for r in got[tp]] == [6, 7, 8, 9]
    assert await fetches.seek_to_beginning(tp) == 6


async def test_no_end_is_known_before_a_response(topic: str, consumer: AIOKafkaConsumer) -> None:
    tp = TopicPartition(topic, 0)
    fetches = Fetches(consumer, max_wait_ms=50)
    try:
        fetches.seek(tp, 0)
        assert fetches.offsets() == {tp: None}
        assert await fetches.fetch(PATIENCE_S, 500) == {}  # the broker answers: nothing there
        assert fetches.offsets() == {tp: Offsets(0, 0)}
    finally:
        await fetches.close()


class _Assignments(ConsumerRebalanceListener):  # type: ignore[misc]
    """Keeps aiokafka's fetcher idle on what is assigned, as the worker's listener does; says when."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer
        self.assigned = asyncio.Event()

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        pass

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        idle_aiokafka_fetcher(self._consumer, assigned)
        self.assigned.set()


async def test_fetching_keeps_the_consumer_in_its_group_past_the_poll_interval(
    bootstrap: KafkaSettings, topic: str
) -> None:
    """aiokafka's group member leaves its group once ``max_poll_interval_ms`` passes without a poll
    (``getmany``/``getone``), which the worker never calls: its fetches must count as polls, else every
    worker stopped five minutes after it started (the default interval)."""
    poll_interval_s = 1.5
    client = kafka.consumer(
        bootstrap,
        "test-fetching-group",
        group_id=f"fetching-{uuid.uuid4().hex[:10]}",
        max_poll_interval_ms=int(poll_interval_s * 1000),
        session_timeout_ms=6_000,
        heartbeat_interval_ms=200,
    )
    listener = _Assignments(client)
    async with kafka.started(client):
        client.subscribe([topic], listener=listener)
        await asyncio.wait_for(listener.assigned.wait(), PATIENCE_S)
        assigned = client.assignment()
        assert len(assigned) == 2
        generation = client._coordinator.generation
        fetches = Fetches(client, max_wait_ms=100)
        try:
            for tp in assigned:
                fetches.seek(tp, 0)
            await _produce(bootstrap, TopicPartition(topic, 0), [b"x"])
            got = 0
            ends = asyncio.get_running_loop().time() + 3 * poll_interval_s
            while asyncio.get_running_loop().time() < ends:
                got += sum(map(len, (await fetches.fetch(0.2, 500)).values()))
        finally:
            await fetches.close()
        assert got == 1
        assert client.assignment() == assigned
        assert client._coordinator.generation == generation, "no rebalance: the member never left"


async def test_a_group_refused_to_the_worker_is_raised_out_of_its_fetches(
    bootstrap: KafkaSettings, kafka_broker: BrokerState
) -> None:
    """Another region's worker may not join this region's group: aiokafka holds the refusal for the
    next poll and stops coordinating until it is taken; the worker's fetch must raise it (else it sat
    outside its group, silent, fetching nothing)."""
    mine, theirs = (f"fa{uuid.uuid4().hex[:8]}", f"fb{uuid.uuid4().hex[:8]}")
    for name in (mine, theirs):
        await ensure_topics(bootstrap, region_topics(name))
    await apply_policy(bootstrap, [mine, theirs])
    client = kafka.consumer(
        kafka_broker.kafka(Identity.edge(theirs), request_timeout_ms=10_000),
        "test-fetching-refused",
        group_id=edge_group(mine),
    )
    async with kafka.started(client):
        client.subscribe([ingest_topic(mine, "embedding")], listener=_Assignments(client))
        fetches = Fetches(client, max_wait_ms=100)
        try:
            with pytest.raises((GroupAuthorizationFailedError, TopicAuthorizationFailedError)):
                await asyncio.wait_for(_fetch_forever(fetches), 30)
        finally:
            await fetches.close()


async def _fetch_forever(fetches: Fetches) -> None:
    while True:
        await fetches.fetch(0.1, 500)


async def test_batches_compressed_with_every_codec_kafka_has_are_read(
    bootstrap: KafkaSettings, topic: str, fetches: Fetches
) -> None:
    """A device's or a backend's client compresses its batches as it likes (librdkafka here): each
    codec's batches are read in order among plain ones. Without lz4, snappy and zstd (aiokafka needs
    cramjam for them) the first such batch raised out of every fetch of its partition."""
    tp = TopicPartition(topic, 0)
    await _produce(bootstrap, tp, [b"plain-1"])
    sent = []
    for codec in ("gzip", "lz4", "snappy", "zstd"):
        producer = Producer(
            {**rdkafka_config(bootstrap, "test-codecs"), "compression.type": codec, "linger.ms": 50}
        )
        values = [b"%s-%d-" % (codec.encode(), i) + b"x" * 300 for i in range(3)]
        for value in values:
            producer.produce(topic, value, partition=0)
        assert await asyncio.to_thread(producer.flush, 10) == 0
        sent.extend(values)
    await _produce(bootstrap, tp, [b"plain-2"])
    fetches.seek(tp, 0)

    got = await _fetch_until(fetches, 14)

    assert [r.value for r in got[tp]] == [b"plain-1", *sent, b"plain-2"]
    assert [r.offset for r in got[tp]] == list(range(14))
