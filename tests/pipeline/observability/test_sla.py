"""The SLA report on synthetic round trips: percentiles, availability, error budget left, version drift,
read from the demo's request log and from OTLP JSON lines of device spans; the command's three outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind
from typer.testing import CliRunner

from edgestream.cli import app
from edgestream.pipeline.observability.otlpjson import OtlpJsonFileExporter
from edgestream.pipeline.observability.sla import (
    Outcome,
    RoundTrip,
    SlaRow,
    budget_left,
    read_round_trips,
    sla_report,
    write_round_trips,
)

T0_MS = 1_700_000_000_000.0
"""A capture time; every synthetic request is captured within the same 10 s."""


def _trips(region: str, version: int | None, latency_ms: float, n: int) -> list[RoundTrip]:
    outcome: Outcome = "fallback" if version is None else "answered"
    return [RoundTrip(T0_MS + i, region, "m", version, latency_ms, outcome, 250.0) for i in range(n)]


def _synthetic() -> list[RoundTrip]:
    return [
        *_trips("eu-west", 1, 10.0, 990),
        *_trips("eu-west", 1, 60.0, 10),
        *_trips("eu-west", 2, 20.0, 500),
        *_trips("eu-west", None, 250.0, 3),
        *_trips("us-east", 1, 5.0, 1000),
    ]


def _rows() -> dict[tuple[str, str], SlaRow]:
    return {(r.region, r.version): r for r in sla_report(_synthetic()).rows}


def test_a_versions_percentiles_and_latency_budget() -> None:
    v1 = _rows()[("eu-west", "1")]
    assert (v1.sent, v1.answered, v1.within_threshold) == (1000, 1000, 990)
    assert v1.p50_ms == 10.0
    assert v1.p95_ms == 10.0
    assert v1.p99_ms == pytest.approx(10.5)  # between the 990th (10 ms) and 991st (60 ms), linearly
    assert v1.latency_sli == pytest.approx(0.99)
    assert v1.latency_budget_left == pytest.approx(0.0, abs=1e-9)  # exactly the 1% the SLO allows
    assert v1.availability is None, "a fallback has no version: availability is per region and model"
    v2 = _rows()[("eu-west", "2")]
    assert (v2.answered, v2.p99_ms, v2.latency_budget_left) == (500, 20.0, 1.0)


def test_a_region_and_models_availability_counts_fallbacks_against_its_budget() -> None:
    eu = _rows()[("eu-west", "all")]
    assert (eu.sent, eu.answered, eu.within_threshold) == (1503, 1500, 1490)
    assert eu.availability == pytest.approx(1500 / 1503)
    assert eu.availability_budget_left == pytest.approx(1 - (3 / 1503) / 0.001)  # overspent: about -1
    assert eu.availability_budget_left is not None
    assert eu.availability_budget_left < -0.99
    assert eu.latency_budget_left == pytest.approx(1 - (10 / 1500) / 0.01)
    us = _rows()[("us-east", "all")]
    assert (us.availability, us.availability_budget_left, us.latency_budget_left) == (1.0, 1.0, 1.0)
    assert us.p50_ms == 5.0


def test_budget_left_is_the_unspent_share_of_the_allowed_bad_share() -> None:
    assert budget_left(0.9995, 0.999) == pytest.approx(0.5)
    assert budget_left(1.0, 0.99) == 1.0
    assert budget_left(0.98, 0.99) == pytest.approx(-1.0)
    assert budget_left(None, 0.99) is None


def test_version_drift_is_more_versions_answering_at_once_than_a_canary_allows() -> None:
    eu = _rows()[("eu-west", "all")]
    assert (eu.versions, eu.max_concurrent_versions, eu.drift) == (2, 2, False)
    three = [*_synthetic(), *_trips("eu-west", 3, 10.0, 5)]
    eu3 = {(r.region, r.version): r for r in sla_report(three).rows}[("eu-west", "all")]
    assert (eu3.versions, eu3.max_concurrent_versions, eu3.drift) == (3, 3, True)
    # The same three versions one after another (a rollout, then a rollback) are not drift.
    spread = [
        RoundTrip(T0_MS + version * 60_000, "eu-west", "m", version, 10.0, "answered")
        for version in (1, 2, 3)
        for _ in range(5)
    ]
    row = sla_report(spread).rows[0]
    assert (row.versions, row.max_concurrent_versions, row.drift) == (3, 1, False)


def test_the_request_log_round_trips_and_bad_lines_are_skipped_not_fatal(tmp_path: Path) -> None:
    path = write_round_trips(_synthetic(), tmp_path / "requests.jsonl")
    with path.open("a") as out:
        out.write("not json\n")
        out.write('{"region": "eu-west"}\n')
        out.write(
            '{"capture_ms": 1, "region": "x", "model": "m", "latency_ms": "NaN", "outcome": "answered"}\n'
        )
        out.write('{"capture_ms": 1, "region": "x", "model": "m", "latency_ms": 1, "outcome": "lost"}\n')
        out.write("[1, 2]\n\n")
    trips, skipped = read_round_trips([path])
    assert trips == _synthetic()
    assert skipped == 5


def _otlp_lines(tmp_path: Path) -> Path:
    """Device spans as the ``file`` trace exporter writes them (one request per line), and a worker
    span the report must ignore."""
    path = tmp_path / "traces.jsonl"
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(OtlpJsonFileExporter(path)))
    tracer = provider.get_tracer("test")
    start_ns = int(T0_MS * 1e6)
    device = {"messaging.system": "kafka", "edgestream.region": "eu-west", "edgestream.model": "m"}
    for version, outcome, ms in ((7, "answered", 12.5), (7, "answered", 30.0), (None, "fallback", 250.0)):
        attrs: dict[str, str | int | float] = {
            **device,
            "edgestream.outcome": outcome,
            "edgestream.deadline_ms": 250.0,
        }
        if version is not None:
            attrs["edgestream.model.version"] = version
        span = tracer.start_span(
            "send edge.eu-west.ingest.embedding", kind=SpanKind.PRODUCER, start_time=start_ns
        )
        span.set_attributes(attrs)
        span.end(end_time=start_ns + int(ms * 1e6))
    worker = tracer.start_span("process edge.eu-west.ingest", kind=SpanKind.CONSUMER, start_time=start_ns)
    worker.set_attributes({"edgestream.model": "m", "edgestream.model.version": 7})
    worker.end(end_time=start_ns + 1_000_000)
    provider.shutdown()
    return path


def test_device_spans_in_otlp_json_lines_are_round_trips(tmp_path: Path) -> None:
    trips, skipped = read_round_trips([_otlp_lines(tmp_path)])
    assert skipped == 0
    assert trips == [
        RoundTrip(T0_MS, "eu-west", "m", 7, 12.5, "answered", 250.0),
        RoundTrip(T0_MS, "eu-west", "m", 7, 30.0, "answered", 250.0),
        RoundTrip(T0_MS, "eu-west", "m", None, 250.0, "fallback", 250.0),
    ]
    row = sla_report(trips).rows[0]
    assert (row.sent, row.answered) == (3, 2)
    assert row.availability == pytest.approx(2 / 3)


def test_the_command_prints_the_table_and_writes_the_json_and_the_png(tmp_path: Path) -> None:
    requests = write_round_trips(_synthetic(), tmp_path / "requests.jsonl")
    spans = _otlp_lines(tmp_path)
    done = CliRunner().invoke(app, ["sla", "report", str(requests), str(spans)], env={"COLUMNS": "240"})
    assert done.exit_code == 0, done.output
    cells = [[c.strip() for c in line.split("│")][1:-1] for line in done.output.splitlines()]
    eu = next(c for c in cells if c[:3] == ["eu-west", "m", "all"])
    # The request log's 1503 and the spans' 3 (a third version answering at once: drift).
    assert eu[3:5] == ["1506", "1502"]
    assert eu[6:] == [f"{1502 / 1506:.2%} ({1 - (4 / 1506) / 0.001:.0%})", "99.33% (33%)", "3 drift"]
    assert ["us-east", "m", "1"] in [c[:3] for c in cells]
    report = json.loads((tmp_path / "sla.json").read_text())
    rows = {(r["region"], r["version"]): r for r in report["rows"]}
    assert rows[("eu-west", "7")]["answered"] == 2
    assert rows[("us-east", "all")]["availability"] == 1.0
    assert report["availability_target"] == 0.999
    assert (tmp_path / "sla.png").read_bytes().startswith(b"\x89PNG")


def test_the_command_says_so_when_its_input_is_missing(tmp_path: Path) -> None:
    done = CliRunner().invoke(app, ["sla", "report", str(tmp_path / "nothing.jsonl")])
    assert done.exit_code == 1
    assert "cannot read" in done.output
