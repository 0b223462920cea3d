"""Stable committed offsets (OffsetFetch v7, require_stable) against the real broker, and the parser."""

from __future__ import annotations

import uuid
from io import BytesIO
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from edgestream.topics.catalogue import ingest_topic
from edgestream.workers.edge.offsets import (
    COORDINATOR_LOAD_IN_PROGRESS,
    UNSTABLE_OFFSET_COMMIT,
    Committed,
    OffsetFetchRequest_v7,
    OffsetFetchResponse_v7,
    StableOffsetFetchRequest,
    UnstableOffsets,
    parse,
    stable_committed,
)

from ..conftest import EdgeRegion


def _response(top: int, partitions: list[tuple[int, int, int]]) -> Any:
    """Encode then decode a v7 answer: (partition, offset, error) on topic ``t``."""
    built = OffsetFetchResponse_v7(
        0, [("t", [(p, off, -1, None, err, {}) for p, off, err in partitions], {})], top, {}
    )
    return OffsetFetchResponse_v7.decode(BytesIO(built.encode()))


def test_the_request_is_v7_flexible_and_asks_for_stable_offsets() -> None:
    request = StableOffsetFetchRequest(
        "g", [TopicPartition("b", 1), TopicPartition("a", 0), TopicPartition("b", 0)]
    )
    struct = request.prepare({9: (1, 9)})
    assert isinstance(struct, OffsetFetchRequest_v7)
    assert struct.FLEXIBLE_VERSION
    decoded = OffsetFetchRequest_v7.decode(BytesIO(struct.encode()))
    assert decoded.group_id == "g"
    assert decoded.require_stable is True
    assert [(name, parts) for name, parts, _ in decoded.topics] == [("a", [0]), ("b", [0, 1])]


def test_a_broker_without_v7_is_refused_rather_than_asked_an_older_question() -> None:
    with pytest.raises(NotImplementedError):
        StableOffsetFetchRequest("g", [TopicPartition("a", 0)]).prepare({9: (1, 6)})


def test_parse_separates_offsets_no_commit_and_partition_errors() -> None:
    top, offsets, errors = parse(_response(0, [(0, 42, 0), (1, -1, 0), (2, -1, UNSTABLE_OFFSET_COMMIT)]))
    assert top == 0
    assert offsets == {TopicPartition("t", 0): Committed(42, ""), TopicPartition("t", 1): None}
    assert errors == {TopicPartition("t", 2): UNSTABLE_OFFSET_COMMIT}


def test_parse_reports_the_top_level_error_that_aiokafka_ignores() -> None:
    top, offsets, errors = parse(_response(COORDINATOR_LOAD_IN_PROGRESS, []))
    assert top == COORDINATOR_LOAD_IN_PROGRESS
    assert offsets == {}
    assert errors == {}


async def test_an_in_doubt_transactional_commit_is_unstable_until_its_transaction_ends(
    edge_region: EdgeRegion,
) -> None:
    """aiokafka's committed() reports the old offset while a transaction holding a newer one is open;
    the stable fetch refuses to answer until the transaction commits, then gives the new offset."""
    group = f"g-{uuid.uuid4().hex[:8]}"
    topic = ingest_topic(edge_region.name, "embedding")
    tp, other = TopicPartition(topic, 0), TopicPartition(topic, 1)
    bootstrap = edge_region.bootstrap
    consumer = AIOKafkaConsumer(**bootstrap.client_kwargs(), group_id=group, enable_auto_commit=False)
    producer = AIOKafkaProducer(**bootstrap.client_kwargs(), transactional_id=f"{group}-txn")
    await consumer.start()
    await producer.start()
    try:
        consumer.assign([tp, other])
        assert await stable_committed(consumer, [tp, other]) == {tp: None, other: None}
        await consumer.commit({tp: 5})
        assert await stable_committed(consumer, [tp, other]) == {tp: Committed(5, ""), other: None}

        await producer.begin_transaction()
        await producer.send_offsets_to_transaction({tp: OffsetAndMetadata(9, "head-9")}, group)
        assert await consumer.committed(tp) == 5, "aiokafka answers with the stale offset"
        with pytest.raises(UnstableOffsets, match="not stable"):
            await stable_committed(consumer, [tp], timeout_s=1.0)
        assert await stable_committed(consumer, [other]) == {other: None}, "only the in-doubt one waits"
        await producer.commit_transaction()
        assert await stable_committed(consumer, [tp]) == {tp: Committed(9, "head-9")}, "metadata comes along"

        await producer.begin_transaction()
        await producer.send_offsets_to_transaction({tp: 12}, group)
        await producer.abort_transaction()
        assert await stable_committed(consumer, [tp]) == {tp: Committed(9, "head-9")}, (
            "an abort changes nothing"
        )
    finally:
        await producer.stop()
        await consumer.stop()
