"""Traces across Kafka with the real broker: the simulated devices and a worker export to one in-memory
exporter during a short run, and each sampled request's trace joins device -> unit (through the unit
span's link) -> reply, the unit span carrying its batch size and model version, and the reply and
result records carrying the request's ``traceparent``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import get_args

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from edgestream.pipeline.contract.records import ResultRecord
from edgestream.pipeline.contract.reply import open_reply
from edgestream.pipeline.observability.traceparent import TRACEPARENT, record_context
from edgestream.pipeline.observability.tracing import Tracing
from edgestream.pipeline.serving.batching import CloseReason
from edgestream.pipeline.serving.served import load_models
from edgestream.pipeline.settings import Region
from edgestream.topics.catalogue import KINDS, ingest_topic, replies_topic, results_topic
from edgestream.workers.edge.worker import EdgeWorker
from edgestream.workers.local.broker.state import BrokerState
from edgestream.workers.local.fleet import Fleet
from edgestream.workers.local.fleet_settings import FleetSettings

from ..conftest import EdgeRegion, eventually, read_topic

pytestmark = pytest.mark.broker


@pytest.fixture
async def traced_worker(
    edge_region: EdgeRegion, memory: tuple[Tracing, InMemorySpanExporter]
) -> AsyncIterator[EdgeWorker]:
    """A worker of the region tracing into ``memory``, running until the test ends."""
    settings = edge_region.settings(max_batch=16)
    worker = EdgeWorker(
        settings, keyring=edge_region.keyring, models=load_models(settings), tracer=memory[0].tracer
    )
    await worker.start()
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        assert await eventually(lambda: worker.readiness.partitions_assigned > 0, timeout_s=30.0)
        yield worker
    finally:
        stop.set()
        try:
            await task
        finally:
            await worker.stop()


@pytest.fixture
def memory() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    return Tracing.of([exporter], batch=False), exporter


def _fleet(edge_region: EdgeRegion, kafka_broker: BrokerState, tracing: Tracing) -> Fleet:
    settings = FleetSettings(
        devices=6,
        rate_per_s=30.0,
        duration_s=2.0,
        bad_fraction=0.0,
        deadline_ms=10_000.0,  # nothing falls back: every request's trace ends with its reply
        drain_s=15.0,
        regions=(Region(name=edge_region.name, lat=0.0, lon=0.0),),
        kafka=edge_region.bootstrap,
        tls_root=kafka_broker.tls_root,
        home=edge_region.home,
        key_file=edge_region.home / f"keys-{edge_region.name}.json",
        enrol=False,
        label_fraction=0.0,
    )
    return Fleet(settings, edge_region.keyring, tracing)


async def test_a_requests_trace_joins_device_unit_and_reply(
    edge_region: EdgeRegion,
    kafka_broker: BrokerState,
    traced_worker: EdgeWorker,
    memory: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = memory
    fleet = _fleet(edge_region, kafka_broker, tracing)
    report = await fleet.run()
    totals = report.totals()
    assert totals.sent > 0
    assert totals.results == totals.sent, f"every request answered: {totals}"
    # Units end with their commit, which may come a commit interval after the last reply.
    assert await eventually(
        lambda: sum(len(u.links) for u in _units(exporter, edge_region.name)) >= totals.sent, timeout_s=10.0
    )
    spans = exporter.get_finished_spans()
    units = _units(exporter, edge_region.name)

    topics = {ingest_topic(edge_region.name, kind) for kind in KINDS}
    devices = [s for s in spans if s.kind == SpanKind.PRODUCER]
    assert len(devices) == totals.sent
    assert {s.name for s in devices} <= {f"send {t}" for t in topics}
    by_link = {(link.context.trace_id, link.context.span_id): unit for unit in units for link in unit.links}
    children: dict[int, set[str]] = {}
    for span in spans:
        if span.parent is not None:
            children.setdefault(span.parent.span_id, set()).add(span.name)
    round_trips_ms = []
    for device in devices:
        ctx = device.get_span_context()
        assert ctx is not None
        assert ctx.trace_flags.sampled
        assert device.attributes is not None
        assert device.attributes["edgestream.outcome"] == "answered"
        assert device.attributes["edgestream.model.version"] == 1
        assert device.attributes["edgestream.region"] == edge_region.name
        unit = by_link[(ctx.trace_id, ctx.span_id)]  # device -> unit, through the link
        unit_ctx = unit.get_span_context()
        assert unit_ctx is not None
        assert unit.kind == SpanKind.CONSUMER
        assert unit.attributes is not None
        assert unit.attributes["messaging.batch.message_count"] == len(unit.links) >= 1
        assert "edgestream.model.version" in unit.attributes
        assert unit.attributes["edgestream.unit.close_reason"] in get_args(CloseReason)
        # unit -> reply (and the rest of its stages)
        assert {"admission", "inference", "output", "reply", "commit"} <= children[unit_ctx.span_id]
        assert device.start_time is not None
        assert device.end_time is not None
        round_trips_ms.append((device.end_time - device.start_time) / 1e6)
    # The device span's duration is the round trip the fleet measured.
    assert sorted(round_trips_ms) == pytest.approx(sorted(totals.latencies_ms), abs=0.01)

    # The reply and the result each carry their request's traceparent: the device span's context.
    sent_contexts = {(s.get_span_context().trace_id, s.get_span_context().span_id) for s in devices}  # type: ignore[union-attr]
    device_keys = {d.device_id.encode(): d.key for d in fleet.devices}
    assert not fleet.refused_replies, "every reply opened under its device's key"
    for topic in (replies_topic(edge_region.name), results_topic(edge_region.name)):
        records = await read_topic(edge_region.bootstrap, topic, expect=totals.sent)
        carried = set()
        for record in records:
            ctx = record_context([(k, v) for k, v in record.headers if k == TRACEPARENT])
            assert ctx is not None, f"{topic} record without a traceparent"
            carried.add((ctx.trace_id, ctx.span_id))
            if topic == results_topic(edge_region.name):
                result = ResultRecord.from_bytes(record.value)
            else:  # sealed to its device
                result = open_reply(record.value, device_keys[record.key], edge_region.name)
            assert result.region == edge_region.name
        assert carried == sent_contexts, topic
    tracing.shutdown()


def _units(exporter: InMemorySpanExporter, region: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == f"process edge.{region}.ingest"]
