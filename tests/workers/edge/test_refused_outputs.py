"""Outputs the cluster refuses for their size, against the real broker: an operator lowered the results
topic's ``max.message.bytes`` below a result. Before, the unit failed at every re-read and its
partitions stopped for good (``workers/edge/sinks.py``: refused batches only abort since they must not
commit). Now the next try sends its outputs one by one, the refusal names the record, and read again
the record is dead-lettered (``internal``, replayable once the topic is fixed); the partition flows
on, with every sink."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from edgestream.pipeline.contract.deadletter import DeadLetter
from edgestream.pipeline.contract.envelope import decode_envelope, new_request_id
from edgestream.pipeline.contract.records import ResultRecord
from edgestream.topics.catalogue import dlq_topic, ingest_topic, results_topic

from ..conftest import EdgeRegion, RunningWorker, read_topic, set_topic_config


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # exactly once, one transaction per worker (the default)
        {"transactions": "per_partition"},
        {"delivery": "at_least_once"},
    ],
    ids=["per_worker", "per_partition", "at_least_once"],
)
async def test_a_record_whose_result_the_cluster_refuses_is_dead_lettered_and_its_partition_flows(
    edge_region: EdgeRegion,
    running_worker: RunningWorker,
    producer: AIOKafkaProducer,
    overrides: dict[str, Any],
) -> None:
    worker = await running_worker(retry_backoff_max_ms=200, **overrides)
    region, device = edge_region.name, "dev-refused"
    topic, results = ingest_topic(region, "embedding"), results_topic(region)
    # One answered first: the producer has written to that results partition, so a refused batch
    # breaks its idempotent sequence there (the next batch would fail as out of order).
    before = new_request_id()
    await producer.send_and_wait(topic, edge_region.embedding(device, request_id=before), key=device.encode())
    assert len(await read_topic(edge_region.bootstrap, results, expect=1)) == 1
    # Below a result's batch (~280 bytes), above a transaction marker's (~80: one the broker cannot
    # write leaves the transaction open for good, and the producer's restart waits on it forever).
    await set_topic_config(edge_region.bootstrap, results, "max.message.bytes", "150")
    refused = new_request_id()
    await producer.send_and_wait(
        topic, edge_region.embedding(device, request_id=refused), key=device.encode()
    )

    [letter] = await read_topic(edge_region.bootstrap, dlq_topic(region), expect=1)
    dead = DeadLetter.from_record(letter)
    assert dead.reason == "internal"
    assert f"publishing its output to {results}" in dead.message
    assert "refused it for its size" in dead.message
    assert dead.replayable, "the record as received: replayed once the topic is fixed"
    assert decode_envelope(dead.value, max_envelope_bytes=1 << 20).request_id == refused

    await set_topic_config(edge_region.bootstrap, results, "max.message.bytes", "1048588")
    answered = new_request_id()
    await producer.send_and_wait(
        topic, edge_region.embedding(device, request_id=answered), key=device.encode()
    )
    records = await read_topic(edge_region.bootstrap, results, expect=2)
    assert [ResultRecord.from_bytes(r.value).request_id for r in records] == [before, answered]
    assert worker.stats.dead_letters == {"internal": 1}
    assert not worker.sink.isolated, "isolation ended once the partition committed"
