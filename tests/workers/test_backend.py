"""A backend as a first-class user, on the real TLS broker: ``backend-<region>`` subscribes with
``edgestream.pipeline.results`` to what a real worker committed (results and a dead letter), commits
its group's offsets, writes a label, and is refused writing ingest and reading another region's results;
every record it read validates against docs/schemas/."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import GroupAuthorizationFailedError, TopicAuthorizationFailedError

from edgestream.pipeline import kafka
from edgestream.pipeline.contract.cloud import Label
from edgestream.pipeline.contract.deadletter import DeadLetter
from edgestream.pipeline.contract.envelope import new_request_id
from edgestream.pipeline.contract.records import ResultRecord
from edgestream.pipeline.contract.reply import open_reply
from edgestream.pipeline.security.identities import Identity
from edgestream.pipeline.settings import KafkaSettings
from edgestream.results import Decoded, subscribe
from edgestream.topics.acl_admin import apply_policy
from edgestream.topics.admin import ensure_topics
from edgestream.topics.catalogue import (
    LABELS_TOPIC,
    SAMPLES_TOPIC,
    SUMMARIES_TOPIC,
    all_topics,
    audit_topic,
    backend_group,
    dlq_topic,
    edge_group,
    ingest_topic,
    replies_topic,
    results_topic,
)
from edgestream.workers.local.broker.state import BrokerState

from ..pipeline.contract.test_schemas import assert_valid, decoded, error_headers
from .conftest import EdgeRegion, RunningWorker, eventually, read_topic

pytestmark = pytest.mark.broker

MODEL = "embedding-scorer"
REQUESTS = 12


async def _aborted_result(region: EdgeRegion) -> bytes:
    """Write a well-formed result in a transaction that aborts (as admin); its request id."""
    rid = new_request_id()
    record = ResultRecord(rid, "terminal-x", MODEL, 1, 0, (1.0,), 0.0, 0.0, 0.0, 1, "n", region.name, 0)
    txn = kafka.producer(
        region.bootstrap, "test-aborted", transactional_id=f"test-aborted-{uuid.uuid4().hex}"
    )
    async with kafka.started(txn) as p:
        await p.begin_transaction()
        await p.send_and_wait(results_topic(region.name), record.to_bytes(), key=b"terminal-x")
        await p.abort_transaction()
    return rid


def _backend(kafka_broker: BrokerState, region: str) -> KafkaSettings:
    if kafka_broker.security_protocol != "SSL":
        pytest.skip("the backend principal needs the TLS broker (EDGESTREAM_TEST_BOOTSTRAP is plaintext)")
    return kafka_broker.kafka(Identity.backend(region))


async def test_the_backend_reads_committed_results_and_dead_letters_and_writes_labels(
    edge_region: EdgeRegion, kafka_broker: BrokerState, running_worker: RunningWorker, producer: Any
) -> None:
    backend = _backend(kafka_broker, edge_region.name)
    await running_worker(sample_fraction=1.0)
    sent: list[bytes] = []
    for i in range(REQUESTS):
        rid = new_request_id()
        device = f"terminal-{i % 4}"
        await producer.send(
            ingest_topic(edge_region.name, "embedding"),
            edge_region.embedding(device, row=i, request_id=rid),
            key=device.encode(),
        )
        sent.append(rid)
    tampered = bytearray(edge_region.embedding("terminal-bad", request_id=new_request_id()))
    tampered[-1] ^= 1
    await producer.send(ingest_topic(edge_region.name, "embedding"), bytes(tampered), key=b"terminal-bad")
    await producer.flush()
    aborted = await _aborted_result(edge_region)

    got: list[Decoded] = []
    stop = asyncio.Event()

    async def handle(decoded: Decoded) -> None:
        got.append(decoded)

    task = asyncio.create_task(subscribe(backend, edge_region.name, "decisions", handle, stop))
    assert await eventually(lambda: len(got) >= REQUESTS + 1 or task.done(), timeout_s=60)
    stop.set()
    stats = await asyncio.wait_for(task, timeout=30)

    results = [d for d in got if isinstance(d, ResultRecord)]
    dead = [d for d in got if isinstance(d, DeadLetter)]
    assert sorted(r.request_id for r in results) == sorted(sent), "every committed result, once"
    assert aborted not in {r.request_id for r in results}, "read_committed: an aborted result is never seen"
    assert [d.reason for d in dead] == ["bad_tag"]
    assert stats.undecodable == 0
    assert stats.handled == REQUESTS + 1

    # The group committed each partition up to its last result, once the handler had it.
    raw_results = await read_topic(edge_region.bootstrap, results_topic(edge_region.name), expect=REQUESTS)
    last: dict[TopicPartition, int] = {}
    for r in raw_results:
        tp = TopicPartition(r.topic, r.partition)
        last[tp] = max(last.get(tp, 0), r.offset + 1)
    group = backend_group(edge_region.name, "decisions")
    async with kafka.started(kafka.admin(edge_region.bootstrap, "test-backend-offsets")) as admin:
        committed = await admin.list_consumer_group_offsets(group, partitions=list(last))
    assert {tp: meta.offset for tp, meta in committed.items()} == last

    # What it read, as it is on the topics, is what the schemas describe; the cloud records too.
    for record in raw_results:
        assert_valid("result", decoded(record.value))
    keyring, region = edge_region.keyring, edge_region.name
    for reply in await read_topic(edge_region.bootstrap, replies_topic(region), expect=REQUESTS):
        device_key = keyring.device_key(region, reply.key.decode(), keyring.current_key_id(region))
        assert_valid("result", decoded(open_reply(reply.value, device_key, region).to_bytes()))
    for topic, kind, expect in (
        (audit_topic(edge_region.name), "audit", REQUESTS + 1),
        (SUMMARIES_TOPIC, "summary", 1),
        (SAMPLES_TOPIC, "sample", 1),
    ):
        records = await read_topic(edge_region.bootstrap, topic, expect=expect)
        assert records, topic
        for record in records:
            assert_valid(kind, decoded(record.value))
    (letter,) = await read_topic(edge_region.bootstrap, dlq_topic(edge_region.name), expect=1)
    assert_valid("dead-letter", error_headers(letter.headers))

    # It writes ground truth, which validates too.
    label = Label(results[0].request_id, results[0].model, 1, int(time.time() * 1000))
    async with kafka.started(kafka.producer(backend, "test-backend-labels")) as labels:
        await labels.send_and_wait(LABELS_TOPIC, label.to_bytes(), key=label.request_id)
    assert_valid("label", decoded(label.to_bytes()))


async def test_the_backend_may_not_write_ingest_read_another_region_or_use_the_edge_group(
    edge_region: EdgeRegion, kafka_broker: BrokerState
) -> None:
    backend = _backend(kafka_broker, edge_region.name)
    other = f"t{uuid.uuid4().hex[:10]}"
    await ensure_topics(edge_region.bootstrap, all_topics([other]))
    await apply_policy(edge_region.bootstrap, [other])

    async with kafka.started(kafka.producer(backend, "test-backend-ingest")) as p:
        with pytest.raises(TopicAuthorizationFailedError):
            await p.send_and_wait(ingest_topic(edge_region.name, "embedding"), b"x", key=b"terminal-1")
        with pytest.raises(TopicAuthorizationFailedError):
            await p.send_and_wait(results_topic(edge_region.name), b"x", key=b"terminal-1")

    # Another region's results exist but are neither visible nor readable to it.
    theirs = TopicPartition(results_topic(other), 0)
    async with kafka.started(kafka.producer(edge_region.bootstrap, "test-other-results")) as p:
        await p.send_and_wait(theirs.topic, b"theirs", key=b"terminal-1", partition=0)
    assert not await _visible(backend, theirs.topic)
    assert await _visible(backend, results_topic(edge_region.name))
    assert await _read(backend, theirs) == 0
    assert await _read(edge_region.bootstrap, theirs) == 1, "the record is there (admin reads it)"
    with pytest.raises(GroupAuthorizationFailedError):
        await _read(backend, TopicPartition(results_topic(edge_region.name), 0), edge_group(edge_region.name))
    own = backend_group(edge_region.name, "audit-trail")
    assert await _read(backend, TopicPartition(results_topic(edge_region.name), 0), own) == 0  # allowed


async def _visible(backend: KafkaSettings, topic: str) -> bool:
    """Whether the backend may see ``topic`` (DESCRIBE): the metadata answer for it has no error."""
    async with kafka.started(kafka.admin(backend, "test-backend-describe")) as client:
        (entry,) = await client.describe_topics([topic])
    code: int = entry["error_code"]
    assert code in (0, TopicAuthorizationFailedError.errno), code
    return code == 0


async def _read(backend: KafkaSettings, tp: TopicPartition, group: str | None = None) -> int:
    """Records read from ``tp`` as the backend, committing them in ``group`` when one is given. A short
    request timeout: a consumer refused a topic's metadata waits out the timeout (30 s by default)."""
    quick = backend.model_copy(update={"request_timeout_ms": 5_000})
    async with kafka.started(kafka.consumer(quick, "test-backend-read", group_id=group)) as c:
        c.assign([tp])
        await c.seek_to_beginning(tp)
        batch = await c.getmany(tp, timeout_ms=2_000)
        if group is not None:
            await c.commit()
        return sum(len(records) for records in batch.values())
