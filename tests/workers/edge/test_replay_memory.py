"""Against the real broker: an envelope is answered only in its place (its key, the partition that key
maps to, its kind's topic), and only once, across a worker restart."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer

from edgestream.pipeline.contract.deadletter import DeadLetter
from edgestream.pipeline.contract.envelope import new_request_id
from edgestream.pipeline.contract.partitioner import partition_for
from edgestream.pipeline.contract.records import ResultRecord
from edgestream.pipeline.serving.served import load_models
from edgestream.topics.catalogue import INGEST, dlq_topic, ingest_topic, results_topic
from edgestream.workers.edge.worker import EdgeWorker

from ..conftest import EdgeRegion, RunningWorker, eventually, read_topic

pytestmark = pytest.mark.broker


async def _answers(region: EdgeRegion, expect: int) -> Counter[bytes]:
    results = await read_topic(region.bootstrap, results_topic(region.name), expect=expect)
    return Counter(ResultRecord.from_bytes(r.value).request_id for r in results)


async def _letters(region: EdgeRegion, expect: int) -> list[DeadLetter]:
    records = await read_topic(region.bootstrap, dlq_topic(region.name), expect=expect)
    return [DeadLetter.from_record(r) for r in records]


async def test_an_envelope_out_of_its_place_is_dead_lettered_with_its_reason(
    edge_region: EdgeRegion, running_worker: RunningWorker, producer: AIOKafkaProducer
) -> None:
    """Issue 12: the same sealed envelope produced to a second partition or to the other kind's topic
    was answered again, and so was one keyed by another device's id."""
    await running_worker()
    device = "dev-place"
    embeddings, frames = ingest_topic(edge_region.name, "embedding"), ingest_topic(edge_region.name, "frame")
    home = partition_for(device.encode(), INGEST.partitions)
    original = edge_region.embedding(device, request_id=new_request_id())
    other_key = edge_region.embedding(device, request_id=new_request_id())
    await producer.send_and_wait(embeddings, original, key=device.encode())
    sent = {
        "key_mismatch": await producer.send_and_wait(embeddings, other_key, key=b"dev-someone-else"),
        "wrong_partition": await producer.send_and_wait(
            embeddings, original, key=device.encode(), partition=(home + 1) % INGEST.partitions
        ),
        "wrong_topic": await producer.send_and_wait(frames, original, key=device.encode()),
    }
    fresh = new_request_id()
    await producer.send_and_wait(
        embeddings, edge_region.embedding(device, request_id=fresh), key=device.encode()
    )

    letters = await _letters(edge_region, expect=len(sent))
    assert {letter.reason: (letter.origin_topic, letter.origin_partition) for letter in letters} == {
        reason: (meta.topic, meta.partition) for reason, meta in sent.items()
    }
    assert {letter.reason: letter.value for letter in letters} == {
        "key_mismatch": other_key,
        "wrong_partition": original,
        "wrong_topic": original,
    }
    answered = await _answers(edge_region, expect=2)
    assert len(answered) == 2, "the original and the fresh one, once each"
    assert fresh in answered
    assert max(answered.values()) == 1


@contextlib.asynccontextmanager
async def _worker(region: EdgeRegion, node: str) -> AsyncIterator[EdgeWorker]:
    """A worker running until the block ends, then stopped as by SIGTERM."""
    settings = region.settings(node_id=node)
    worker = EdgeWorker(settings, keyring=region.keyring, models=load_models(settings))
    await worker.start()
    stop = asyncio.Event()
    run = asyncio.create_task(worker.run(stop))
    try:
        yield worker
    finally:
        stop.set()
        try:
            await run
        finally:
            await worker.stop()


async def test_a_replay_after_a_worker_restart_is_dead_lettered_replayed(
    edge_region: EdgeRegion, producer: AIOKafkaProducer
) -> None:
    """Issue 12: the replay memory was lost on restart, so the same sealed envelope produced again
    within ``max_age_ms`` was answered again. The new owner reads it back before serving."""
    device, rid = "dev-restart", new_request_id()
    envelope = edge_region.embedding(device, request_id=rid)
    topic = ingest_topic(edge_region.name, "embedding")
    async with _worker(edge_region, "restart-1") as first:
        await producer.send_and_wait(topic, envelope, key=device.encode())
        assert await eventually(lambda: first.stats.results == 1, timeout_s=30), first.stats.as_dict()

    async with _worker(edge_region, "restart-2"):
        fresh = new_request_id()
        await producer.send_and_wait(topic, envelope, key=device.encode())  # the replay
        await producer.send_and_wait(
            topic, edge_region.embedding(device, request_id=fresh), key=device.encode()
        )
        letters = await _letters(edge_region, expect=1)
        assert [(letter.reason, letter.value) for letter in letters] == [("replayed", envelope)]
        # Answered: so the partition was rebuilt in time, not held at a floor that refuses it.
        assert await _answers(edge_region, expect=2) == Counter({rid: 1, fresh: 1})
