"""The one client factory: safe defaults on every client, read-to-end and consumer lag on the real
broker."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import NewTopic

from edgestream.pipeline import kafka
from edgestream.pipeline.errors import KafkaTimeout
from edgestream.pipeline.settings import KafkaSettings

LOCAL = KafkaSettings(bootstrap_servers="127.0.0.1:1", request_timeout_ms=1234)


async def test_consumers_commit_by_hand_and_read_only_committed() -> None:
    client = kafka.consumer(LOCAL, "c-1", group_id="g")
    await client.stop()
    assert client._enable_auto_commit is False
    assert client._isolation_level == "read_committed"
    assert client._group_id == "g"
    assert client._client._request_timeout_ms == 1234


async def test_a_consumer_option_overrides_a_default() -> None:
    client = kafka.consumer(LOCAL, "c-1", isolation_level="read_uncommitted", fetch_max_wait_ms=7)
    await client.stop()
    assert client._isolation_level == "read_uncommitted"
    assert client._fetch_max_wait_ms == 7


async def test_producers_wait_for_all_replicas_and_are_idempotent() -> None:
    plain = kafka.producer(LOCAL, "p-1")
    transactional = kafka.producer(LOCAL, "p-2", transactional_id="t-1")
    for client in (plain, transactional):
        await client.stop()
        assert client._sender._acks == -1
        assert client._txn_manager is not None, "idempotence enabled"
    assert plain._txn_manager.transactional_id is None
    assert transactional._txn_manager.transactional_id == "t-1"


def test_partitions_lists_every_partition_in_order() -> None:
    assert kafka.partitions([("a", 2), ("b", 1)]) == [
        TopicPartition("a", 0),
        TopicPartition("a", 1),
        TopicPartition("b", 0),
    ]


class _Trickle:
    """A stand-in consumer whose one partition yields ``per_fetch`` records per fetch, 10 ms apart
    (more are there than the end offset says: records published while it reads)."""

    def __init__(self, records: int, per_fetch: int = 1) -> None:
        self.tp = TopicPartition("slow", 0)
        self.at = 0
        self.end = records
        self.per_fetch = per_fetch

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.at = offset

    def assign(self, tps: list[TopicPartition]) -> None:
        assert tps == [self.tp]

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        self.at = 0

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {self.tp: self.end}

    async def position(self, tp: TopicPartition) -> int:
        return self.at

    async def getmany(self, *tps: TopicPartition, timeout_ms: int) -> dict[TopicPartition, list[Any]]:
        await asyncio.sleep(0.01)
        first, self.at = self.at, self.at + self.per_fetch
        return {self.tp: [type("Record", (), {"offset": o})() for o in range(first, self.at)]}


async def test_an_idle_bound_lets_a_long_read_finish_while_records_keep_coming() -> None:
    slow = _Trickle(40)
    read = [r async for r in kafka.read_to_end(slow, [slow.tp], timeout_ms=200, idle=True)]
    assert len(read) == 40
    with pytest.raises(KafkaTimeout, match="slow"):
        async for _ in kafka.read_to_end(slow, [slow.tp], timeout_ms=200):
            pass


async def test_a_read_to_the_end_leaves_the_records_fetched_past_it_to_be_read_on() -> None:
    ahead = _Trickle(4, per_fetch=3)  # the second fetch brings offsets 3, 4 and 5; the end is 4
    read = [r.offset async for r in kafka.read_to_end(ahead, [ahead.tp], timeout_ms=1000)]
    assert read == [0, 1, 2, 3]
    assert ahead.at == 4, "a follower reading on gets offsets 4 and 5 (a state published meanwhile)"


async def _topic(bootstrap: KafkaSettings, partitions: int) -> str:
    name = f"test-kafka-{uuid.uuid4().hex[:8]}"
    async with kafka.started(kafka.admin(bootstrap, "test-kafka")) as admin:
        await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    return name


def _recent_base_ms() -> int:
    """A time ten minutes ago, to stamp records from: the broker deletes records stamped older than
    its retention (24 h) at its next retention check (every minute), active segment and all, so a
    test that stamped them in 1970 lost them whenever a check fell between its produce and its read."""
    return int(time.time() * 1000) - 600_000


async def _produce(bootstrap: KafkaSettings, topic: str, values: list[bytes], partition: int = 0) -> None:
    async with kafka.started(kafka.producer(bootstrap, "test-kafka")) as producer:
        for value in values:
            await producer.send_and_wait(topic, value, partition=partition)


async def test_read_to_end_reads_up_to_the_end_seen_at_the_start(bootstrap: KafkaSettings) -> None:
    topic = await _topic(bootstrap, 2)
    await _produce(bootstrap, topic, [b"a0", b"a1"], partition=0)
    await _produce(bootstrap, topic, [b"b0"], partition=1)
    tps = kafka.partitions([(topic, 2)])
    async with kafka.started(kafka.consumer(bootstrap, "test-kafka")) as client:
        seen: list[bytes] = []
        async for record in kafka.read_to_end(client, tps, timeout_ms=20_000):
            if not seen:  # produced after the end offsets were taken: not part of this read
                await _produce(bootstrap, topic, [b"late"], partition=0)
            seen.append(record.value)
    assert sorted(seen) == [b"a0", b"a1", b"b0"]
    records = await kafka.read_all(bootstrap, tps, client_id="test-kafka", timeout_ms=20_000)
    assert sorted(r.value for r in records) == [b"a0", b"a1", b"b0", b"late"]


async def test_a_read_since_a_time_starts_at_the_first_record_stamped_at_or_after_it(
    bootstrap: KafkaSettings,
) -> None:
    """What the rollout controller reads per step: only the records of the canary's time, found with
    the broker's time index, in every partition; a partition with none newer gives nothing."""
    topic = await _topic(bootstrap, 3)
    base = _recent_base_ms()
    async with kafka.started(kafka.producer(bootstrap, "test-kafka")) as producer:
        for partition, stamps in ((0, (1_000, 2_000, 3_000)), (1, (1_500, 2_500)), (2, (500,))):
            for stamp in stamps:
                await producer.send_and_wait(
                    topic, str(stamp).encode(), partition=partition, timestamp_ms=base + stamp
                )
    tps = kafka.partitions([(topic, 3)])
    since = await kafka.read_all(
        bootstrap, tps, client_id="test-kafka", timeout_ms=20_000, since_ms=base + 2_000
    )
    assert sorted(int(r.value) for r in since) == [2_000, 2_500, 3_000]
    assert (
        await kafka.read_all(bootstrap, tps, client_id="test-kafka", timeout_ms=20_000, since_ms=base + 9_000)
        == []
    )
    everything = await kafka.read_all(bootstrap, tps, client_id="test-kafka", timeout_ms=20_000)
    assert len(everything) == 6


async def test_read_to_end_raises_the_one_timeout_when_the_end_is_not_reached(
    bootstrap: KafkaSettings,
) -> None:
    topic = await _topic(bootstrap, 1)
    await _produce(bootstrap, topic, [b"x"])
    tps = kafka.partitions([(topic, 1)])
    with pytest.raises(KafkaTimeout, match=topic) as caught:
        await kafka.read_all(bootstrap, tps, client_id="test-kafka", timeout_ms=0)
    assert caught.value.reason == "kafka_timeout"
    assert caught.value.retriable


async def test_consumer_lag_counts_records_past_the_committed_offset(bootstrap: KafkaSettings) -> None:
    topic = await _topic(bootstrap, 2)
    await _produce(bootstrap, topic, [b"1", b"2", b"3"], partition=0)
    await _produce(bootstrap, topic, [b"4"], partition=1)
    tps = kafka.partitions([(topic, 2)])
    group = f"test-kafka-{uuid.uuid4().hex[:8]}"
    assert await kafka.consumer_lag(bootstrap, group, tps, client_id="test-kafka") == {tps[0]: 3, tps[1]: 1}
    async with kafka.started(kafka.consumer(bootstrap, "test-kafka", group_id=group)) as client:
        client.assign(tps)
        await client.commit({tps[0]: 2})
    assert await kafka.consumer_lag(bootstrap, group, tps, client_id="test-kafka") == {tps[0]: 1, tps[1]: 1}


async def test_a_resumed_read_reads_on_from_where_the_last_one_ended(bootstrap: KafkaSettings) -> None:
    """What a poller (the demo story's wait for labelled samples) does: each record once over a series
    of reads, the first from a time, the next ones from where the previous ended."""
    topic = await _topic(bootstrap, 2)
    base = _recent_base_ms()
    async with kafka.started(kafka.producer(bootstrap, "test-kafka")) as producer:
        for partition, stamp in ((0, 1_000), (0, 5_000), (1, 6_000)):
            await producer.send_and_wait(
                topic, str(stamp).encode(), partition=partition, timestamp_ms=base + stamp
            )
    tps = kafka.partitions([(topic, 2)])
    async with kafka.started(kafka.consumer(bootstrap, "test-kafka")) as client:

        async def read(resume: bool) -> list[int]:
            stream = kafka.read_to_end(client, tps, timeout_ms=20_000, since_ms=base + 2_000, resume=resume)
            return sorted([int(r.value) async for r in stream])

        assert await read(resume=False) == [5_000, 6_000]
        assert await read(resume=True) == []
        await _produce(bootstrap, topic, [b"7000"], partition=1)
        await _produce(bootstrap, topic, [b"8000"], partition=0)
        assert await read(resume=True) == [7_000, 8_000]
        assert await read(resume=False) == [5_000, 6_000, 7_000, 8_000]  # from the time again


async def test_a_background_reader_takes_a_bulk_read_in_small_responses(bootstrap: KafkaSettings) -> None:
    """360 KB in one partition: a plain consumer gets it in one or two fetches, a background reader in
    responses of at most ``max_partition_fetch_bytes`` (64 KiB: two 30 KB records each)."""
    topic = await _topic(bootstrap, 1)
    values = [bytes([i]) * 30_000 for i in range(12)]
    await _produce(bootstrap, topic, values)
    tp = TopicPartition(topic, 0)

    async def largest_batch(client: Any) -> int:
        largest, seen = 0, 0
        async with kafka.started(client):
            client.assign([tp])
            await client.seek_to_beginning(tp)
            while seen < len(values):
                batch = await client.getmany(tp, timeout_ms=5_000)
                got = len(batch.get(tp, []))
                largest, seen = max(largest, got), seen + got
        return largest

    assert await largest_batch(kafka.background_consumer(bootstrap, "test-kafka")) <= 2
    assert await largest_batch(kafka.consumer(bootstrap, "test-kafka")) > 2


async def test_unstable_records_are_those_an_open_transaction_holds(bootstrap: KafkaSettings) -> None:
    topic = await _topic(bootstrap, 2)
    await _produce(bootstrap, topic, [b"committed"], partition=0)
    tps = kafka.partitions([(topic, 2)])
    assert await kafka.unstable_records(bootstrap, tps, client_id="test-kafka") == {}
    producer = kafka.producer(bootstrap, "test-kafka-txn", transactional_id=f"t-{uuid.uuid4().hex[:8]}")
    async with kafka.started(producer):
        await producer.begin_transaction()
        for value in (b"open-1", b"open-2"):
            await producer.send_and_wait(topic, value, partition=1)
        assert await kafka.unstable_records(bootstrap, tps, client_id="test-kafka") == {tps[1]: 2}
        await producer.commit_transaction()
    assert await kafka.unstable_records(bootstrap, tps, client_id="test-kafka") == {}
