"""Fast replies are queued as aiokafka's ``send`` would queue them (same partitions, keys, values,
headers and order), into the producer's own batches; one too large for a built batch goes through
``send`` and its size check; a full batch is waited out as ``send`` waits it out; and a reply that
cannot be queued or delivered (no metadata, a closed or failed producer, a batch the broker refused,
too large) is counted and dropped: the others go, and nothing is raised into the worker. No broker:
the producer is never started, its metadata is set here, and the sender task's part (taking batches,
resolving their deliveries) is played by the tests."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError, NotLeaderForPartitionError
from aiokafka.protocol.metadata import MetadataResponse_v0
from aiokafka.record.memory_records import MemoryRecords

from edgestream.pipeline.contract.partitioner import partition_for
from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.edge.replies import ReplySender
from edgestream.workers.edge.sinks import Output, PartitionWork
from edgestream.workers.edge.txnsink import SENT_ALONE_BYTES

TOPIC = "edge.r.replies"
PARTITIONS = 3

Queued = tuple[int, bytes | None, bytes, list[tuple[str, bytes]]]


def _sender() -> ReplySender:
    """A sender whose producer is never started: its metadata is set here."""
    sender = ReplySender(KafkaSettings(bootstrap_servers="127.0.0.1:1"), "n")
    sender.producer.client.cluster.update_metadata(
        MetadataResponse_v0(
            [(0, "127.0.0.1", 1)], [(0, TOPIC, [(0, p, 0, [0], [0]) for p in range(PARTITIONS)])]
        )
    )
    sender.producer._txn_manager.set_pid_and_epoch(1, 0)  # what the started producer gets (idempotence)
    return sender


def _take(sender: ReplySender) -> list[Any]:
    """What the sender task does with ready batches: take every one (each partition's oldest first)."""
    acc = sender.producer._message_accumulator
    taken: list[Any] = []
    while acc._batches:
        nodes, _ = acc.drain_by_nodes(ignore_nodes=set())
        taken.extend(batch for by_tp in nodes.values() for batch in by_tp.values())
    return taken


def _records(batches: list[Any]) -> list[Queued]:
    """The records of ``batches`` in order: partition, key, value, headers."""
    out: list[Queued] = []
    for batch in batches:
        records = MemoryRecords(bytes(batch.get_data_buffer())).next_batch()
        assert records is not None
        out.extend((batch.tp.partition, r.key, r.value, list(r.headers)) for r in records)
    return out


def _by_partition(records: list[Queued]) -> dict[int, list[Queued]]:
    parts: dict[int, list[Queued]] = {}
    for record in records:
        parts.setdefault(record[0], []).append(record)
    return parts


@pytest.fixture
def replies() -> list[Output]:
    traced = (("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"),)
    return [
        Output(TOPIC, f"reply-{i}".encode(), f"device-{i % 7}".encode(), traced if i % 3 == 0 else ())
        for i in range(20)
    ]


async def test_replies_are_queued_as_send_queues_them(replies: list[Output]) -> None:
    sender, reference = _sender(), _sender()
    await sender.send([PartitionWork(replies=replies[:12]), PartitionWork(replies=replies[12:])])
    for reply in replies:
        await reference.producer.send(reply.topic, reply.value, key=reply.key, headers=list(reply.headers))
    fast, by_send = _records(_take(sender)), _records(_take(reference))
    assert _by_partition(fast) == _by_partition(by_send)
    assert sorted(fast) == sorted(by_send)
    assert len(fast) == len(replies)
    assert [partition for partition, *_ in fast] == [
        partition_for(key or b"", PARTITIONS) for _, key, *_ in fast
    ]
    assert len({partition for partition, *_ in fast}) > 1
    assert (sender.sent, sender.failed) == (20, 0)
    await sender.stop()
    await reference.stop()


async def test_a_batch_the_broker_refuses_counts_each_of_its_replies(replies: list[Output]) -> None:
    sender = _sender()
    await sender.send([PartitionWork(replies=replies[:10])])
    first = _take(sender)
    await sender.send([PartitionWork(replies=replies[10:])])
    second = _take(sender)
    for batch in first:
        batch.done(base_offset=0)
    refused = second[0]
    for batch in second:
        if batch is refused:
            batch.failure(NotLeaderForPartitionError())
        else:
            batch.done(base_offset=10)
    await asyncio.sleep(0)  # delivery callbacks
    assert (sender.sent, sender.failed) == (20, refused.record_count)
    assert refused.record_count > 0
    assert refused.future.exception() is not None
    await sender.stop()


async def _taking(sender: ReplySender, taken: list[Any]) -> None:
    """Plays aiokafka's sender task until cancelled: takes batches as they are queued."""
    while True:
        taken.extend(_take(sender))
        await asyncio.sleep(0.001)


async def test_a_full_batch_is_waited_out_and_every_reply_lands_in_order() -> None:
    sender = _sender()
    sender.producer._message_accumulator._batch_size = 300  # a few replies a batch
    one_device = [Output(TOPIC, bytes([i]) * 100, b"device-1") for i in range(12)]
    taken: list[Any] = []
    task = asyncio.create_task(_taking(sender, taken))
    await asyncio.wait_for(sender.send([PartitionWork(replies=one_device)]), 5)
    task.cancel()
    taken.extend(_take(sender))
    assert len(taken) > 2
    assert [value for _, _, value, _ in _records(taken)] == [o.value for o in one_device]
    assert (sender.sent, sender.failed) == (12, 0)
    await sender.stop()


async def test_a_reply_that_cannot_be_queued_is_counted_and_the_rest_go() -> None:
    sender = _sender()
    too_large = b"x" * (sender.producer._max_request_size + 1)
    oversized = b"y" * (SENT_ALONE_BYTES + 1)  # through send, which accepts it
    values = [b"a", too_large, oversized, b"b"]
    taken: list[Any] = []
    task = asyncio.create_task(_taking(sender, taken))  # the oversized one waits for a's batch to go
    await asyncio.wait_for(sender.send([PartitionWork(replies=[Output(TOPIC, v, b"d") for v in values])]), 5)
    task.cancel()
    taken.extend(_take(sender))
    assert [value for _, _, value, _ in _records(taken)] == [b"a", oversized, b"b"]
    assert (sender.sent, sender.failed) == (3, 1)
    await sender.stop()


async def test_replies_to_a_failed_producer_are_counted_not_raised() -> None:
    sender = _sender()
    sender.producer._message_accumulator.fail_all(KafkaTimeoutError("the sender gave up"))
    await sender.send([PartitionWork(replies=[Output(TOPIC, b"a", b"d"), Output(TOPIC, b"b", b"e")])])
    assert (sender.sent, sender.failed) == (0, 2)
    await sender.stop()


async def test_a_reply_whose_topic_has_no_metadata_is_counted_and_not_queued() -> None:
    sender = _sender()
    waited: list[str] = []

    async def wait_on_metadata(topic: str) -> set[int]:
        waited.append(topic)
        raise KafkaTimeoutError(f"no metadata for {topic}")

    sender.producer.client._wait_on_metadata = wait_on_metadata
    await sender.send([PartitionWork(replies=[Output("edge.other.replies", b"a", b"d")])])
    assert waited == ["edge.other.replies"]
    assert sender.producer._message_accumulator._batches == {}
    assert (sender.sent, sender.failed) == (0, 1)
    await sender.stop()
