"""A worker process (``serve``) following the registry, under a little traffic: its /metrics agrees
with what was sent and with what the topics hold, and serves every name the catalogue lists for it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from edgestream.pipeline.contract.deadletter import DeadLetter
from edgestream.pipeline.contract.envelope import new_request_id
from edgestream.pipeline.contract.fallbacks import fallbacks_header
from edgestream.pipeline.models import load_dataset
from edgestream.pipeline.observability.catalogue import METRICS_WORKER
from edgestream.pipeline.registry import ModelState
from edgestream.pipeline.registry.client import RegistryClient
from edgestream.topics.catalogue import dlq_topic, ingest_topic, results_topic
from edgestream.workers.edge.service import serve
from edgestream.workers.local.broker.config import free_port

from ...pipeline.observability.served import Samples, http_get, missing, samples, total
from ..conftest import EdgeRegion, read_topic
from .test_hot_swap import MODEL, Registry, _stable_state
from .test_worker import _seal

pytestmark = pytest.mark.broker

GOOD = 12
"""Answered requests sent."""
REPORTING = 3
"""Of them, the ones carrying a report of 2 fallbacks."""


async def _page(port: int) -> tuple[str, Samples]:
    status, text = await http_get(port, "/metrics")
    assert status == 200
    return text, samples(text)


async def _until(port: int, what: str, holds: Callable[[Samples], bool], timeout_s: float = 60.0) -> Samples:
    """Poll /metrics until ``holds(page)``; bounded."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            _, page = await _page(port)
            if holds(page):
                return page
        except ConnectionRefusedError:
            pass
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        await asyncio.sleep(0.1)


async def test_metrics_agree_with_the_traffic_and_the_topics(
    edge_region: EdgeRegion, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    current = (await RegistryClient(edge_region.bootstrap).read_states()).get(MODEL, ModelState(MODEL))
    registry = Registry(tmp_path / "registry", edge_region, current)
    state = await _stable_state(registry)
    port = free_port()
    settings = edge_region.settings(health_port=port, registry=True, registry_home=registry.root)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop))
    try:
        await _until(port, "ready", lambda p: total(p, "edgestream_ready") == 1)
        await _until(
            port,
            "the registry revision",
            lambda p: total(p, "edgestream_registry_revision", model=MODEL) == state.revision,
        )
        region, x = edge_region.name, load_dataset("embedding").X_test[0]
        topic = ingest_topic(region, "embedding")
        for i in range(GOOD):
            headers = [fallbacks_header(2)] if i < REPORTING else []
            envelope = _seal(edge_region, f"dev-{i}", "embedding", x)
            await producer.send(topic, envelope, key=f"dev-{i}".encode(), headers=headers)
        twice = _seal(edge_region, "dev-r", "embedding", x, request_id=new_request_id())
        await producer.send(topic, twice, key=b"dev-r")
        await producer.send(topic, twice, key=b"dev-r")  # the second copy: replayed
        stale = _seal(
            edge_region, "dev-s", "embedding", x, capture_time_ms=int(time.time() * 1000) - 3_600_000
        )
        await producer.send(topic, stale, key=b"dev-s")
        await producer.send(topic, b"garbage", key=b"dev-g", headers=[fallbacks_header(50)])
        await producer.flush()
        answered = len(await read_topic(edge_region.bootstrap, results_topic(region), expect=GOOD + 1))
        dead = await read_topic(edge_region.bootstrap, dlq_topic(region), expect=3)
        page = await _until(
            port,
            "the committed counts",
            lambda p: total(p, "edgestream_records_total") >= answered + len(dead),
        )
        await _until(port, "lag caught up", lambda p: _lag(p, topic) == (0, 0))
        text, page = await _page(port)
    finally:
        stop.set()
        await task

    assert answered == GOOD + 1
    reasons = sorted(DeadLetter.from_record(d).reason for d in dead)
    assert reasons == ["replayed", "stale", "undecodable"]
    assert total(page, "edgestream_records_total", outcome="result") == answered
    assert total(page, "edgestream_records_total", outcome="replayed") == 1
    assert total(page, "edgestream_records_total", outcome="refused") == 1  # garbage: the device's fault
    assert total(page, "edgestream_records_total", outcome="dead_letter") == 1  # stale: read too late
    for reason in reasons:
        assert total(page, "edgestream_dead_letters_total", reason=reason) == 1
    version = {"model": MODEL, "version": str(state.stable)}
    assert total(page, "edgestream_results_total", **version) == answered
    assert total(page, "edgestream_round_trip_seconds_count", **version) == answered
    assert total(page, "edgestream_queue_wait_seconds_count", **version) == answered
    assert total(page, "edgestream_batch_wait_seconds_count", **version) == answered
    assert total(page, "edgestream_batch_size_sum", **version) == answered
    assert total(page, "edgestream_device_fallbacks_total", model=MODEL) == 2 * REPORTING
    assert total(page, "edgestream_registry_revision", model=MODEL) == state.revision
    assert total(page, "edgestream_ready") == 1
    assert total(page, "edgestream_commit_seconds_count") >= 1
    assert total(page, "edgestream_refusals_total") == 0
    assert missing(text, METRICS_WORKER) == []


def _lag(page: Samples, topic: str) -> tuple[float, float]:
    """Records and seconds behind on ``topic``, over its partitions (None: no series yet)."""
    records = [
        v for (n, ls), v in page.items() if n == "edgestream_consumer_lag_records" and ("topic", topic) in ls
    ]
    if not records:
        return (-1.0, -1.0)
    return total(page, "edgestream_consumer_lag_records", topic=topic), total(
        page, "edgestream_consumer_lag_seconds", topic=topic
    )
