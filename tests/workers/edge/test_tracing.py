"""The worker's unit traces, without a broker: the unit span, its links and children, what outputs carry,
bad ``traceparent`` headers processed untraced, and nothing at all with tracing off. The real-broker run
(device -> unit -> reply) is in ``test_traces.py``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from edgestream.pipeline.contract.codec import encode_tensor
from edgestream.pipeline.contract.envelope import seal
from edgestream.pipeline.models import load_dataset
from edgestream.pipeline.observability.tracing import Tracing
from edgestream.pipeline.security.keyring import KeyRing
from edgestream.pipeline.serving.auditchain import chain_id
from edgestream.pipeline.serving.served import load_models
from edgestream.pipeline.settings import KafkaSettings
from edgestream.topics.catalogue import (
    audit_topic,
    dlq_topic,
    edge_group,
    ingest_topic,
    replies_topic,
    results_topic,
)
from edgestream.workers.edge.admission import Item
from edgestream.workers.edge.settings import WorkerSettings
from edgestream.workers.edge.tracing import NO_TRACE, unit_attributes
from edgestream.workers.edge.worker import EdgeWorker

REGION = "eu-west"
TP = TopicPartition(ingest_topic(REGION, "embedding"), 0)
KEYS = KeyRing({REGION: {1: bytes(32)}})
SAMPLED = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
UNSAMPLED = b"00-1af7651916cd43dd8448eb211c80319c-c7ad6b7169203331-00"
Headers = tuple[tuple[str, bytes], ...]


@pytest.fixture
def memory() -> Iterator[tuple[Tracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    tracing = Tracing.of([exporter], batch=False)
    yield tracing, exporter
    tracing.shutdown()


def _worker(model_home: Path, tracing: Tracing | None) -> EdgeWorker:
    settings = WorkerSettings(
        region=REGION,
        home=model_home,
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"),
        models=("embedding-scorer",),
    )
    tracer = None if tracing is None else tracing.tracer
    return EdgeWorker(settings, keyring=KEYS, models=load_models(settings), tracer=tracer)


@pytest.fixture
async def traced(model_home: Path, memory: tuple[Tracing, InMemorySpanExporter]) -> AsyncIterator[EdgeWorker]:
    worker = _worker(model_home, memory[0])
    yield worker
    await worker.stop()


def _admit(worker: EdgeWorker, headers: Sequence[Headers], *, bad: int | None = None) -> list[Item]:
    """One sealed embedding per entry of ``headers``, with those Kafka headers (the ``bad``-th sealed
    with a model nobody serves)."""
    x = load_dataset("embedding").X_test[0]
    items = []
    for offset, hs in enumerate(headers):
        value = seal(
            encode_tensor(x, "float16"),
            device_key=KEYS.device_key(REGION, "dev-1", 1),
            device_id="dev-1",
            key_id=1,
            kind="embedding",
            model="no-such-model" if offset == bad else "embedding-scorer",
            capture_time_ms=int(time.time() * 1000),
        )
        record: ConsumerRecord[bytes, bytes] = ConsumerRecord(
            TP.topic, TP.partition, offset, 0, 0, b"dev-1", value, None, 5, len(value), hs
        )
        item, _ = worker._admission.admit(TP, 0, record, worker.keyring, time.monotonic(), time.time() * 1000)
        items.append(item)
    return items


async def _process(worker: EdgeWorker, items: list[Item]) -> dict[str, list[Headers]]:
    """The unit's stages as the worker runs them (replies and the commit stage left out), its trace
    ended as a commit would; by topic, each output's headers."""
    trace = worker.traces.unit(items, "full")
    worker._admission.check(items)
    trace.mark("admission")
    await worker._inference.infer(items)
    trace.mark("inference")
    worker._chains.start(chain_id(TP.topic, TP.partition), None, offset=0)
    work = worker._outputs.build(items, time.monotonic(), worker.keyring)
    trace.mark("output")
    trace.mark("reply")
    trace.committed(time.time_ns())
    by_topic: dict[str, list[Headers]] = {}
    for output in [*work[TP].outputs, *work[TP].replies]:
        by_topic.setdefault(output.topic, []).append(tuple(output.headers))
    return by_topic


def _by_name(spans: Sequence[ReadableSpan]) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        out.setdefault(span.name, []).append(span)
    return out


async def test_a_unit_span_links_every_record_and_its_children_follow_the_stages(
    traced: EdgeWorker, memory: tuple[Tracing, InMemorySpanExporter]
) -> None:
    items = _admit(traced, [(("traceparent", SAMPLED),), (("traceparent", UNSAMPLED),), ()], bad=2)
    outputs = await _process(traced, items)
    spans = _by_name(memory[1].get_finished_spans())

    (unit,) = spans[f"process edge.{REGION}.ingest"]
    assert unit.kind == SpanKind.CONSUMER
    assert unit.parent is None
    assert unit.attributes is not None
    assert dict(unit.attributes) == {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.consumer.group.name": edge_group(REGION),
        "edgestream.region": REGION,
        "messaging.batch.message_count": 3,
        "edgestream.unit.close_reason": "full",
        "edgestream.model": "embedding-scorer",
        "edgestream.model.version": 1,
    }
    assert [(link.context.trace_id, link.context.trace_flags.sampled) for link in unit.links] == [
        (int(SAMPLED[3:35], 16), True),
        (int(UNSAMPLED[3:35], 16), False),
    ]
    unit_ctx = unit.get_span_context()
    assert unit_ctx is not None
    for name in ("admission", "inference", "output", "reply", "commit"):
        for span in spans[name]:
            assert span.parent is not None, name
            assert span.parent.span_id == unit_ctx.span_id, name
    # Per record only for the sampled one, linked to its record's context.
    (admission,) = spans["admission"]
    (output,) = spans["output"]
    for span in (admission, output):
        assert [link.context.span_id for link in span.links] == [int(SAMPLED[36:52], 16)]
        assert span.attributes is not None
        assert span.attributes["messaging.kafka.offset"] == 0
    assert len(spans["inference"]) == len(spans["reply"]) == len(spans["commit"]) == 1
    assert unit.start_time is not None
    assert unit.end_time is not None
    assert all(s.end_time is not None and s.end_time <= unit.end_time for s in memory[1].get_finished_spans())

    # The record's context rides on its result, reply and audit record; the dead letter keeps its own.
    for topic in (results_topic(REGION), replies_topic(REGION)):
        assert outputs[topic] == [(("traceparent", SAMPLED),), (("traceparent", UNSAMPLED),)]
    assert outputs[audit_topic(REGION)][:2] == [(("traceparent", SAMPLED),), (("traceparent", UNSAMPLED),)]
    (letter,) = outputs[dlq_topic(REGION)]
    assert ("traceparent", SAMPLED) not in letter
    assert ("traceparent", UNSAMPLED) not in letter


@pytest.mark.parametrize(
    "headers",
    [
        (("traceparent", b"00-zz"),),
        (("traceparent", SAMPLED + b"x" * 100_000),),
        (("traceparent", SAMPLED), ("traceparent", SAMPLED)),
        (("traceparent", SAMPLED.upper()),),
    ],
    ids=["malformed", "oversized", "repeated", "uppercase"],
)
async def test_a_bad_traceparent_leaves_its_record_answered_and_untraced(
    traced: EdgeWorker, memory: tuple[Tracing, InMemorySpanExporter], headers: Headers
) -> None:
    items = _admit(traced, [headers, (("traceparent", SAMPLED),)])
    outputs = await _process(traced, items)
    assert traced.traces.untraced == 1
    assert [it.error for it in items] == [None, None]
    assert outputs[results_topic(REGION)] == [(), (("traceparent", SAMPLED),)]
    (unit,) = _by_name(memory[1].get_finished_spans())[f"process edge.{REGION}.ingest"]
    assert len(unit.links) == 1
    assert unit.status.status_code == StatusCode.UNSET


async def test_a_unit_of_unsampled_records_makes_no_span_but_passes_their_context_on(
    traced: EdgeWorker, memory: tuple[Tracing, InMemorySpanExporter]
) -> None:
    items = _admit(traced, [(("traceparent", UNSAMPLED),)])
    assert traced.traces.unit(items, "max_wait") is NO_TRACE
    outputs = await _process(traced, items)
    assert memory[1].get_finished_spans() == ()
    assert outputs[results_topic(REGION)] == [(("traceparent", UNSAMPLED),)]


async def test_with_tracing_off_no_header_is_read_and_no_output_carries_one(model_home: Path) -> None:
    worker = _worker(model_home, None)
    try:
        items = _admit(worker, [(("traceparent", SAMPLED),), (("traceparent", b"junk"),)])
        assert worker.traces.unit(items, "full") is NO_TRACE
        outputs = await _process(worker, items)
        assert [it.traceparent for it in items] == [None, None]
        assert outputs[results_topic(REGION)] == [(), ()]
        assert worker.traces.untraced == 0
    finally:
        await worker.stop()


def test_a_unit_of_two_models_lists_them_aligned_with_their_versions() -> None:
    class _Served:
        def __init__(self, key: tuple[str, int]) -> None:
            self.key = key

    items = [Item(TP, 0, i, 0, None, (), b"", 0.0) for i in range(3)]
    for item, key in zip(items, [("b-model", 2), ("a-model", 7), ("b-model", 2)], strict=True):
        item.model = _Served(key)  # type: ignore[assignment]
    attributes = unit_attributes(items, "deadline")
    assert attributes["edgestream.model"] == ["a-model", "b-model"]
    assert attributes["edgestream.model.version"] == [7, 2]
    assert attributes["messaging.batch.message_count"] == 3
