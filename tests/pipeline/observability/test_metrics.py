"""WorkerMetrics: names, constant labels, values, buckets, model info, registries that do not collide."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edgestream.pipeline.observability.metrics import (
    BATCH_SIZE_BUCKETS,
    END_TO_END_BUCKETS_S,
    WorkerMetrics,
    observe_all,
)

NODE = {"region": "eu-west", "node": "n1"}


def sample(metrics: WorkerMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, {**NODE, **labels})


def fresh() -> WorkerMetrics:
    return WorkerMetrics(region="eu-west", node="n1")


def result(metrics: WorkerMetrics, model: str, version: int, e2e_s: float) -> None:
    metrics.answered(
        model, version, end_to_end_s=e2e_s, round_trip_s=e2e_s, queue_wait_s=0.001, batch_wait_s=0.002
    )


def test_every_metric_is_exposed_with_its_type_and_constant_labels() -> None:
    metrics = fresh()
    result(metrics, "m", 1, 0.01)
    metrics.dead_letter("stale")
    metrics.inference("m", 1, 4, 0.002)
    metrics.model_info("m", 1, "00" * 32, "CPUExecutionProvider")
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())}
    expected = {
        "edgestream_records_consumed": "counter",
        "edgestream_results": "counter",
        "edgestream_dead_letters": "counter",
        "edgestream_transactions": "counter",
        "edgestream_rewinds": "counter",
        "edgestream_end_to_end_seconds": "histogram",
        "edgestream_inference_seconds": "histogram",
        "edgestream_batch_size": "histogram",
        "edgestream_unit_seconds": "histogram",
        "edgestream_in_flight_records": "gauge",
        "edgestream_partitions_assigned": "gauge",
        "edgestream_paused": "gauge",
        "edgestream_model_info": "gauge",
    }
    for name, kind in expected.items():
        assert families[name].type == kind, name
        assert families[name].samples, name
        for s in families[name].samples:
            assert s.labels["region"] == "eu-west"
            assert s.labels["node"] == "n1"


def test_counters_and_gauges_start_at_zero() -> None:
    metrics = fresh()
    assert sample(metrics, "edgestream_records_consumed_total") == 0
    assert sample(metrics, "edgestream_transactions_total", outcome="committed") == 0
    assert sample(metrics, "edgestream_transactions_total", outcome="aborted") == 0
    assert sample(metrics, "edgestream_rewinds_total") == 0
    assert sample(metrics, "edgestream_paused") == 0
    assert sample(metrics, "edgestream_partitions_assigned") == 0
    assert sample(metrics, "edgestream_in_flight_records") == 0


def test_updates() -> None:
    metrics = fresh()
    metrics.consumed(10)
    metrics.consumed()
    for _ in range(3):
        result(metrics, "frame-classifier", 2, 0.02)
    result(metrics, "embedding-scorer", 1, 0.02)
    metrics.dead_letter("bad_tag")
    metrics.dead_letter("bad_tag")
    metrics.dead_letter("replayed")
    metrics.commit(committed=True, seconds=0.01)
    metrics.commit(committed=True, seconds=0.01)
    metrics.commit(committed=False, seconds=0.3)
    metrics.unit(0.05)
    metrics.rewind()
    metrics.set_in_flight(700)
    metrics.set_partitions(6)
    metrics.set_paused(True)
    assert sample(metrics, "edgestream_records_consumed_total") == 11
    assert sample(metrics, "edgestream_results_total", model="frame-classifier", version="2") == 3
    assert sample(metrics, "edgestream_results_total", model="embedding-scorer", version="1") == 1
    assert sample(metrics, "edgestream_end_to_end_seconds_count") == 4
    assert sample(metrics, "edgestream_dead_letters_total", reason="bad_tag") == 2
    assert sample(metrics, "edgestream_dead_letters_total", reason="replayed") == 1
    assert sample(metrics, "edgestream_transactions_total", outcome="committed") == 2
    assert sample(metrics, "edgestream_transactions_total", outcome="aborted") == 1
    assert sample(metrics, "edgestream_commit_seconds_sum") == pytest.approx(0.32)
    assert sample(metrics, "edgestream_unit_seconds_sum") == pytest.approx(0.05)
    assert sample(metrics, "edgestream_rewinds_total") == 1
    assert sample(metrics, "edgestream_in_flight_records") == 700
    assert sample(metrics, "edgestream_partitions_assigned") == 6
    assert sample(metrics, "edgestream_paused") == 1
    metrics.set_paused(False)
    assert sample(metrics, "edgestream_paused") == 0


def test_end_to_end_buckets_sit_around_the_sla() -> None:
    metrics = fresh()
    bounds = [float(b) for b in END_TO_END_BUCKETS_S]
    assert bounds == [0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2, 5]
    result(metrics, "m", 1, 0.05)  # on the SLA: counted as within it (le is inclusive)
    result(metrics, "m", 1, 0.0501)
    result(metrics, "m", 1, -0.2)  # device clock ahead: observed as 0
    assert sample(metrics, "edgestream_end_to_end_seconds_bucket", le="0.001") == 1
    assert sample(metrics, "edgestream_end_to_end_seconds_bucket", le="0.04") == 1
    assert sample(metrics, "edgestream_end_to_end_seconds_bucket", le="0.05") == 2
    assert sample(metrics, "edgestream_end_to_end_seconds_bucket", le="0.075") == 3
    assert sample(metrics, "edgestream_end_to_end_seconds_bucket", le="+Inf") == 3
    assert sample(metrics, "edgestream_end_to_end_seconds_sum") == pytest.approx(0.1001)


def test_inference_and_batch_size_by_model() -> None:
    metrics = fresh()
    assert list(BATCH_SIZE_BUCKETS) == [1, 2, 4, 8, 16, 32, 64, 128]
    metrics.inference("a", 1, 1, 0.001)
    metrics.inference("a", 1, 64, 0.004)
    metrics.inference("a", 2, 2, 0.003)
    metrics.inference("b", 1, 3, 0.002)
    a1 = {"model": "a", "version": "1"}
    assert sample(metrics, "edgestream_inference_seconds_count", **a1) == 2
    assert sample(metrics, "edgestream_inference_seconds_sum", **a1) == pytest.approx(0.005)
    assert sample(metrics, "edgestream_inference_seconds_count", model="a", version="2") == 1
    assert sample(metrics, "edgestream_batch_size_bucket", **a1, le="1.0") == 1
    assert sample(metrics, "edgestream_batch_size_bucket", **a1, le="32.0") == 1
    assert sample(metrics, "edgestream_batch_size_bucket", **a1, le="64.0") == 2
    assert sample(metrics, "edgestream_batch_size_bucket", model="b", version="1", le="2.0") == 0
    assert sample(metrics, "edgestream_batch_size_bucket", model="b", version="1", le="4.0") == 1
    assert sample(metrics, "edgestream_batch_size_sum", model="b", version="1") == 3


def test_model_info_keeps_one_series_per_model_and_creates_its_series_at_zero() -> None:
    metrics = fresh()
    metrics.model_info("m", 1, "aa" * 32, "CPUExecutionProvider")
    metrics.model_info("m", 1, "aa" * 32, "CPUExecutionProvider")  # again: no change
    metrics.model_info("other", 4, "cc" * 32, "CUDAExecutionProvider")
    assert sample(metrics, "edgestream_results_total", model="m", version="1") == 0
    assert sample(metrics, "edgestream_inference_seconds_count", model="m", version="1") == 0
    assert sample(metrics, "edgestream_round_trip_seconds_count", model="m", version="1") == 0
    metrics.model_info("m", 2, "bb" * 32, "CPUExecutionProvider")
    text = generate_latest(metrics.registry).decode()
    info = [
        s.labels
        for f in text_string_to_metric_families(text)
        if f.name == "edgestream_model_info"
        for s in f.samples
    ]
    assert sorted((i["model"], i["version"], i["sha256"][:2], i["provider"]) for i in info) == [
        ("m", "2", "bb", "CPUExecutionProvider"),
        ("other", "4", "cc", "CUDAExecutionProvider"),
    ]


def test_known_dead_letter_reasons_start_at_zero() -> None:
    metrics = WorkerMetrics(region="eu-west", node="n1", dead_letter_reasons=("stale", "bad_tag"))
    assert sample(metrics, "edgestream_dead_letters_total", reason="stale") == 0
    assert sample(metrics, "edgestream_dead_letters_total", reason="bad_tag") == 0
    assert sample(metrics, "edgestream_dead_letters_total", reason="replayed") is None


def test_workers_in_one_process_do_not_collide_nor_touch_the_global_registry() -> None:
    one = WorkerMetrics(region="eu-west", node="n1")
    two = WorkerMetrics(region="eu-west", node="n2")
    one.consumed(3)
    two.consumed(5)
    assert one.registry is not two.registry
    assert sample(one, "edgestream_records_consumed_total") == 3
    assert (
        two.registry.get_sample_value(
            "edgestream_records_consumed_total", {"region": "eu-west", "node": "n2"}
        )
        == 5
    )
    assert REGISTRY.get_sample_value("edgestream_records_consumed_total", NODE) is None


# Durations on and either side of bucket bounds, negative ones (clamped to 0), one past the last bound;
# binary fractions and small integers, so the sums added in any order are exact.
DURATIONS = [0.0, -0.25, 0.001, 0.0009765625, 0.02, 0.03125, 0.05, 0.0625, 0.5, 2.0, 5.0, 8.0, 0.5, 0.05]


def _exposed(metrics: WorkerMetrics) -> list[str]:
    """The exposition, less the series' creation times."""
    text = generate_latest(metrics.registry).decode()
    return [line for line in text.splitlines() if "_created{" not in line]


def test_a_unit_observed_together_exposes_what_results_observed_one_by_one_do() -> None:
    one_by_one, together = fresh(), fresh()
    for i, d in enumerate(DURATIONS):
        one_by_one.answered("m", 1, end_to_end_s=d, round_trip_s=-d, queue_wait_s=d / 2, batch_wait_s=i)
    together.answered_many(
        "m",
        1,
        end_to_end_s=DURATIONS,
        round_trip_s=[-d for d in DURATIONS],
        queue_wait_s=[d / 2 for d in DURATIONS],
        batch_wait_s=list(range(len(DURATIONS))),
    )
    assert _exposed(together) == _exposed(one_by_one)
    assert sample(together, "edgestream_end_to_end_seconds_bucket", le="0.05") == 8  # <= 0.05, as observe
    assert sample(together, "edgestream_results_total", model="m", version="1") == len(DURATIONS)


def test_observe_all_puts_a_nan_nowhere_but_the_sum_as_observe_does() -> None:
    one_by_one, together = fresh(), fresh()
    child_a = one_by_one._end_to_end
    child_b = together._end_to_end
    for v in (0.01, float("nan"), 3.0):
        child_a.observe(v)
    observe_all(child_b, [0.01, float("nan"), 3.0])
    assert _exposed(together) == _exposed(one_by_one)
