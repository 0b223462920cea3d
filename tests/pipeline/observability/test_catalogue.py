"""The catalogue: each process's metrics object (the device gateway's too) declares exactly the names
listed for it, each name once; the rollout controller serves its list on /metrics while it watches."""

from __future__ import annotations

import asyncio
import os
import signal

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edgestream.pipeline.learning.rollout import Bounds, Verdict
from edgestream.pipeline.observability import catalogue
from edgestream.pipeline.observability.cloud import AggregatorMetrics, BoundedLabel, RolloutMetrics
from edgestream.pipeline.observability.metrics import WorkerMetrics
from edgestream.pipeline.registry.signing import SigningKey
from edgestream.pipeline.registry.state import Canary, ModelState
from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.gateway.metrics import GatewayMetrics
from edgestream.workers.local.broker.config import free_port
from edgestream.workers.rollout_controller import Controller, stage_shares, watch_until_signalled

from .served import http_get, missing, samples, total


def test_each_metrics_object_declares_exactly_its_processs_names() -> None:
    for metrics, names in (
        (WorkerMetrics(region="r", node="n"), catalogue.METRICS_WORKER),
        (GatewayMetrics("r", "n"), catalogue.METRICS_GATEWAY),
        (AggregatorMetrics(node="n"), catalogue.METRICS_AGGREGATOR),
        (RolloutMetrics(node="n"), catalogue.METRICS_ROLLOUT),
    ):
        text = generate_latest(metrics.registry).decode()
        assert missing(text, names) == []
        families = {
            f"{f.name}_total" if f.type == "counter" else f.name
            for f in text_string_to_metric_families(text)
            if not f.name.endswith("_created")  # prometheus_client's creation times, not ours
        }
        assert families == set(names), type(metrics).__name__
        assert len(set(names)) == len(names)


def test_a_histogram_is_exposed_as_buckets_sum_and_count() -> None:
    assert catalogue.exposed(catalogue.ROUND_TRIP) == (
        "edgestream_round_trip_seconds_bucket",
        "edgestream_round_trip_seconds_sum",
        "edgestream_round_trip_seconds_count",
    )
    assert catalogue.exposed(catalogue.RECORDS) == ("edgestream_records_total",)


def test_outcomes_and_refusal_kinds_start_at_zero() -> None:
    metrics = WorkerMetrics(region="r", node="n")
    page = samples(generate_latest(metrics.registry).decode())
    for outcome in catalogue.OUTCOMES:
        assert (
            "edgestream_records_total",
            frozenset({("region", "r"), ("node", "n"), ("outcome", outcome)}),
        ) in page
    for kind in catalogue.REFUSAL_KINDS:
        assert total(page, "edgestream_refusals_total", kind=kind) == 0
    metrics.refusal("tls")
    assert (
        metrics.registry.get_sample_value(
            "edgestream_refusals_total", {"region": "r", "node": "n", "kind": "tls"}
        )
        == 1
    )


def test_labels_from_other_writers_are_bounded() -> None:
    label = BoundedLabel(limit=2)
    assert [label(v) for v in ("eu", "us", "eu", "ap", "zz")] == ["eu", "us", "eu", "other", "other"]
    metrics = AggregatorMetrics(node="n")
    for i in range(100):
        metrics.window_opened(f"region-{i}")
    regions = {
        dict(labels)["region"]
        for (name, labels) in samples(generate_latest(metrics.registry).decode())
        if name == "edgestream_aggregator_windows_total"
    }
    assert len(regions) == 65
    assert "other" in regions


def test_stage_shares_split_devices_between_stable_and_canary() -> None:
    assert stage_shares(ModelState("m")) == {}
    assert stage_shares(ModelState("m", stable=1)) == {1: 1.0}
    canary = Canary(2, 0.25, (0.05, 0.25, 1.0), 0)
    assert stage_shares(ModelState("m", stable=1, canary=canary)) == {1: 0.75, 2: 0.25}
    metrics = RolloutMetrics(node="n")
    metrics.state("m", 7, {1: 0.75, 2: 0.25})
    metrics.state("m", 8, {1: 1.0})  # rolled back: version 2 no longer routed to
    page = samples(generate_latest(metrics.registry).decode())
    assert total(page, "edgestream_rollout_stage", model="m", version="1") == 1.0
    assert not any(n == "edgestream_rollout_stage" and ("version", "2") in ls for (n, ls) in page)
    assert total(page, "edgestream_registry_revision", model="m") == 8


async def test_the_rollout_controller_serves_its_names_while_it_watches() -> None:
    controller = Controller(KafkaSettings(), Bounds(), signer=SigningKey.generate(), labels=False)

    async def state(model: str) -> ModelState:
        return ModelState(model, stable=3, revision=12)

    controller._state = state  # type: ignore[method-assign]  # no registry needed to watch
    port = free_port()
    verdicts: list[Verdict] = []
    watching = asyncio.create_task(
        watch_until_signalled(controller, "m", interval_s=0.05, on_verdict=verdicts.append, health_port=port)
    )
    for _ in range(200):
        if verdicts:
            break
        await asyncio.sleep(0.02)
    status, text = await http_get(port, "/metrics")
    ready, _ = await http_get(port, "/readyz")
    os.kill(os.getpid(), signal.SIGINT)  # what stops the watch (its handler, not KeyboardInterrupt)
    await asyncio.wait_for(watching, 10)
    assert status == 200
    assert ready == 200
    assert missing(text, catalogue.METRICS_ROLLOUT) == []
    page = samples(text)
    assert total(page, "edgestream_ready") == 1
    assert total(page, "edgestream_registry_revision", model="m") == 12
    assert total(page, "edgestream_rollout_stage", model="m", version="3") == 1.0
    assert total(page, "edgestream_rollout_advances_total", model="m") == 0
