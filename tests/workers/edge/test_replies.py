"""Fast replies are queued as aiokafka's ``send`` would queue them (same partitions, keys, values,
headers and order), one too large for a built batch goes through ``send`` and its size check, and a
reply that cannot be queued (no metadata, no buffer room during a broker restart, too large) is
counted and dropped: the others go, and nothing is raised into the worker."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError
from aiokafka.protocol.metadata import MetadataResponse_v0

from edgestream.pipeline.contract.partitioner import partition_for
from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.edge.replies import ReplySender
from edgestream.workers.edge.sinks import Output, PartitionWork
from edgestream.workers.edge.txnsink import SENT_ALONE_BYTES

TOPIC = "edge.r.replies"
PARTITIONS = 3

Queued = tuple[TopicPartition, bytes | None, bytes, list[tuple[str, bytes]]]


class _Recorder:
    """Stands in for the producer's accumulator: records each record queued, refuses ``b"stuck"`` at
    once and fails the delivery of ``b"refused"``."""

    def __init__(self) -> None:
        self.queued: list[Queued] = []

    async def add_message(
        self, tp: TopicPartition, key: bytes | None, value: bytes, *args: Any, **kwargs: Any
    ) -> asyncio.Future[Any]:
        if value == b"stuck":
            raise KafkaTimeoutError("no room in the producer's buffer")
        self.queued.append((tp, key, value, list(kwargs.get("headers") or [])))
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if value == b"refused":
            done.set_exception(KafkaTimeoutError("not acknowledged"))
        else:
            done.set_result(None)
        return done


def _sender() -> tuple[ReplySender, _Recorder]:
    """A sender whose producer is never started: its metadata is set here, its accumulator records."""
    sender = ReplySender(KafkaSettings(bootstrap_servers="127.0.0.1:1"), "n")
    sender.producer.client.cluster.update_metadata(
        MetadataResponse_v0(
            [(0, "127.0.0.1", 1)], [(0, TOPIC, [(0, p, 0, [0], [0]) for p in range(PARTITIONS)])]
        )
    )
    recorder = _Recorder()
    sender.producer._message_accumulator = recorder
    return sender, recorder


@pytest.fixture
def replies() -> list[Output]:
    traced = (("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"),)
    return [
        Output(TOPIC, f"reply-{i}".encode(), f"device-{i % 7}".encode(), traced if i % 3 == 0 else ())
        for i in range(20)
    ]


async def test_replies_are_queued_as_send_queues_them(replies: list[Output]) -> None:
    sender, fast = _sender()
    reference, by_send = _sender()
    await sender.send([PartitionWork(replies=replies[:12]), PartitionWork(replies=replies[12:])])
    for reply in replies:
        await reference.producer.send(reply.topic, reply.value, key=reply.key, headers=list(reply.headers))
    assert fast.queued == by_send.queued
    assert [tp.partition for tp, key, _, _ in fast.queued] == [
        partition_for(key or b"", PARTITIONS) for _, key, _, _ in fast.queued
    ]
    assert len({tp.partition for tp, *_ in fast.queued}) > 1
    assert (sender.sent, sender.failed) == (20, 0)
    await sender.stop()
    await reference.stop()


async def test_a_reply_that_cannot_be_queued_is_counted_and_the_rest_go() -> None:
    sender, recorder = _sender()
    too_large = b"x" * (sender.producer._max_request_size + 1)
    oversized = b"y" * (SENT_ALONE_BYTES + 1)  # through send, which accepts it
    values = [b"a", b"stuck", b"refused", too_large, oversized, b"b"]
    await sender.send([PartitionWork(replies=[Output(TOPIC, v, b"d") for v in values])])
    await asyncio.sleep(0)  # acknowledgement callbacks
    assert [value for _, _, value, _ in recorder.queued] == [b"a", b"refused", oversized, b"b"]
    assert (sender.sent, sender.failed) == (4, 3)
    await sender.stop()


async def test_a_reply_whose_topic_has_no_metadata_is_counted_and_not_queued() -> None:
    sender, recorder = _sender()
    waited: list[str] = []

    async def wait_on_metadata(topic: str) -> set[int]:
        waited.append(topic)
        raise KafkaTimeoutError(f"no metadata for {topic}")

    sender.producer.client._wait_on_metadata = wait_on_metadata
    await sender.send([PartitionWork(replies=[Output("edge.other.replies", b"a", b"d")])])
    assert waited == ["edge.other.replies"]
    assert recorder.queued == []
    assert (sender.sent, sender.failed) == (0, 1)
    await sender.stop()
