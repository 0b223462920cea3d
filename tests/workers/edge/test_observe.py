"""What a committed unit adds to the worker's metrics: one outcome per record, an answer's latencies
from the times its item carries, its device's fallback report, and the served models' info and
registry revision."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition

from edgestream.pipeline.contract.fallbacks import fallbacks_header
from edgestream.pipeline.errors import (
    AuthenticationFailed,
    EdgestreamError,
    InferenceFailed,
    NonFiniteOutput,
    NonFiniteTensor,
    RateLimited,
    RecordFailed,
    ReplayedRequest,
    StaleCapture,
    UndecodableEnvelope,
    UnknownModel,
)
from edgestream.pipeline.observability.metrics import MAX_FALLBACKS_PER_RECORD, WorkerMetrics
from edgestream.workers.edge.admission import Answer, Item
from edgestream.workers.edge.observe import observe_committed, outcome_of

TP = TopicPartition("edge.r.ingest.embedding", 0)
NODE = {"region": "r", "node": "n1"}
MV = {"model": "embedding-scorer", "version": "4"}


def _value(metrics: WorkerMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, {**NODE, **labels})
    return 0.0 if value is None else value


def _item(
    *,
    error: EdgestreamError | None = None,
    capture_ms: float,
    kafka_ms: int,
    fetched_s: float,
    infer_start_s: float = 0.0,
    headers: tuple[tuple[str, bytes], ...] = (),
) -> Item:
    envelope: Any = SimpleNamespace(capture_time_ms=capture_ms)
    served: Any = SimpleNamespace(key=("embedding-scorer", 4))
    answer = None if error else Answer(1, (0.2, 0.8), 1.0, 8, infer_start_s)
    return Item(TP, 1, 0, kafka_ms, b"dev", headers, b"", fetched_s, envelope, None, served, error, answer)


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (ReplayedRequest(b"r" * 16), "replayed"),
        (UndecodableEnvelope("garbage"), "refused"),
        (AuthenticationFailed("bad tag"), "refused"),
        (NonFiniteTensor("nan in"), "refused"),
        (RateLimited("dev", 50.0, 100), "refused"),
        (UnknownModel("nope", None), "refused"),
        (StaleCapture(1, 2), "dead_letter"),  # read too late: the system's fault, not the device's
        (NonFiniteOutput("nan out"), "dead_letter"),  # same reason code as NonFiniteTensor
        (InferenceFailed("boom"), "dead_letter"),
        (RecordFailed("building", ValueError("x")), "dead_letter"),
    ],
)
def test_each_dead_letter_counts_under_the_outcome_of_whose_fault_it_is(
    error: EdgestreamError, outcome: str
) -> None:
    assert outcome_of(error) == outcome


def test_a_committed_unit_counts_outcomes_and_an_answers_latencies() -> None:
    metrics = WorkerMetrics(region="r", node="n1")
    now_ms, now_s = time.time() * 1000.0, time.monotonic()
    answered = _item(
        capture_ms=now_ms - 40.0,  # captured 40 ms ago
        kafka_ms=int(now_ms - 30.0),  # in Kafka 30 ms ago
        fetched_s=now_s - 0.025,  # fetched 25 ms ago: 5 ms in Kafka
        infer_start_s=now_s - 0.010,  # inferred 10 ms ago: 15 ms waiting for its batch
        headers=(fallbacks_header(2),),
    )
    refused = _item(error=AuthenticationFailed("x"), capture_ms=now_ms, kafka_ms=0, fetched_s=now_s)
    refused.headers = (fallbacks_header(5),)  # an unauthentic record's report counts nothing
    replayed = _item(error=ReplayedRequest(b"r" * 16), capture_ms=now_ms, kafka_ms=0, fetched_s=now_s)
    stale = _item(error=StaleCapture(1, 2), capture_ms=now_ms, kafka_ms=0, fetched_s=now_s)
    observe_committed(metrics, [answered, refused, replayed, stale], now_s - 0.03, now_ms - 20.0)

    assert _value(metrics, "edgestream_records_total", outcome="result") == 1
    assert _value(metrics, "edgestream_records_total", outcome="refused") == 1
    assert _value(metrics, "edgestream_records_total", outcome="replayed") == 1
    assert _value(metrics, "edgestream_records_total", outcome="dead_letter") == 1
    assert _value(metrics, "edgestream_dead_letters_total", reason="stale") == 1
    assert _value(metrics, "edgestream_results_total", **MV) == 1
    # Replied 20 ms after capture: within 20 ms, not within 10.
    assert _value(metrics, "edgestream_round_trip_seconds_bucket", **MV, le="0.02") == 1
    assert _value(metrics, "edgestream_round_trip_seconds_bucket", **MV, le="0.01") == 0
    assert _value(metrics, "edgestream_round_trip_seconds_sum", **MV) == pytest.approx(0.020, abs=1e-6)
    assert _value(metrics, "edgestream_queue_wait_seconds_sum", **MV) == pytest.approx(0.005, abs=0.002)
    assert _value(metrics, "edgestream_batch_wait_seconds_sum", **MV) == pytest.approx(0.015, abs=1e-6)
    assert _value(metrics, "edgestream_end_to_end_seconds_count") == 1
    assert _value(metrics, "edgestream_device_fallbacks_total", model="embedding-scorer") == 2
    assert _value(metrics, "edgestream_unit_seconds_count") == 1


def test_without_a_reply_no_round_trip_and_a_reports_count_is_bounded() -> None:
    metrics = WorkerMetrics(region="r", node="n1")
    now_ms, now_s = time.time() * 1000.0, time.monotonic()
    loud = _item(
        capture_ms=now_ms, kafka_ms=int(now_ms), fetched_s=now_s, headers=(fallbacks_header(999_999),)
    )
    observe_committed(metrics, [loud], None, None)
    assert _value(metrics, "edgestream_results_total", **MV) == 1
    assert _value(metrics, "edgestream_round_trip_seconds_count", **MV) == 0
    assert _value(metrics, "edgestream_unit_seconds_count") == 0
    assert _value(metrics, "edgestream_device_fallbacks_total", model="embedding-scorer") == (
        MAX_FALLBACKS_PER_RECORD
    )


def test_an_empty_unit_observes_no_unit_duration() -> None:
    metrics = WorkerMetrics(region="r", node="n1")
    observe_committed(metrics, [], time.monotonic(), time.time() * 1000.0)
    assert _value(metrics, "edgestream_unit_seconds_count") == 0
