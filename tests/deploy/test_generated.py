"""The committed deploy/prometheus and deploy/grafana files: equal to what ``edgestream sla generate``
makes from the declared SLO, valid YAML/JSON, and using only metrics the processes expose."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from typer.testing import CliRunner

from edgestream.cli import app
from edgestream.pipeline.observability import alerting, catalogue, dashboard, slo
from edgestream.pipeline.observability.generated import GRAFANA_DIR, PROMETHEUS_DIR, generated_files, stale
from edgestream.pipeline.observability.yamltext import dump

from .metric_names import exposed, known, used

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The checkout, whose deploy/ holds the committed copies."""


def test_the_committed_files_are_what_the_command_generates() -> None:
    assert stale(REPO_ROOT) == [], "run `edgestream sla generate` and commit deploy/"


def test_generate_check_fails_on_a_changed_file_and_generate_repairs_it(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["sla", "generate", "--root", str(tmp_path)]).exit_code == 0
    assert runner.invoke(app, ["sla", "generate", "--root", str(tmp_path), "--check"]).exit_code == 0
    alerts = tmp_path / PROMETHEUS_DIR / "rules/alerts.yml"
    alerts.write_text(alerts.read_text().replace("14.4", "20"))
    checked = runner.invoke(app, ["sla", "generate", "--root", str(tmp_path), "--check"])
    assert checked.exit_code == 1
    assert "rules/alerts.yml" in checked.output
    assert runner.invoke(app, ["sla", "generate", "--root", str(tmp_path)]).output == (
        f"wrote {PROMETHEUS_DIR / 'rules/alerts.yml'}\n"
    )
    assert stale(tmp_path) == []


@pytest.mark.parametrize(
    "value",
    [
        {"a": "plain", "b": "needs: quoting", "c": "yes", "d": "", "e": "multi\nline\n  indented"},
        {"list": [{"x": 1, "y": [1.5, True, None]}, "s", [], {}], "empty": {}, "n": -3},
        {"deep": [{"k": [{"j": "x\ny"}]}], "quote": 'say "hi" {{ $labels.a }}', "colon": "a:b:", "n": "15s"},
    ],
)
def test_the_yaml_writer_round_trips(value: dict[str, Any]) -> None:
    assert yaml.safe_load(dump(value, header=["a comment"])) == value


def test_every_generated_file_parses_back_to_what_was_generated() -> None:
    files = generated_files()
    assert yaml.safe_load(files[PROMETHEUS_DIR / "rules/alerts.yml"]) == alerting.alert_rules()
    assert yaml.safe_load(files[PROMETHEUS_DIR / "rules/recording.yml"]) == alerting.recording_rules()
    assert yaml.safe_load(files[PROMETHEUS_DIR / "prometheus.yml"]) == alerting.scrape_config()
    assert json.loads(files[GRAFANA_DIR / "edgestream.json"]) == dashboard.dashboard()


def _rule_exprs() -> list[str]:
    docs = [alerting.recording_rules(), alerting.alert_rules()]
    return [rule["expr"] for doc in docs for group in doc["groups"] for rule in group["rules"]]


def test_every_metric_a_rule_or_panel_uses_is_exposed_by_a_process() -> None:
    worker, gateway, aggregator, rollout = exposed()
    every = worker | gateway | aggregator | rollout
    board = json.loads((REPO_ROOT / GRAFANA_DIR / "edgestream.json").read_text())
    names = used(_rule_exprs()) | used(dashboard.expressions(board))
    assert {"edgestream_round_trip_seconds_bucket", "edgestream_records_total", "up"} <= names
    assert {"edgestream_gateway_sessions", "edgestream_gateway_replies_total"} <= names
    assert sorted(n for n in names if not known(n, every)) == []


def test_the_dashboard_covers_what_the_issue_asks_per_region_and_version() -> None:
    board = json.loads((REPO_ROOT / GRAFANA_DIR / "edgestream.json").read_text())
    exprs = dashboard.expressions(board)
    for metric in (
        "edgestream_round_trip_seconds_bucket",
        "edgestream_results_total",
        "edgestream_batch_size_bucket",
        "edgestream_consumer_lag_seconds",
        "edgestream_dead_letters_total",
        "edgestream_model_info",
    ):
        assert metric in used(exprs), metric
    assert any(alerting.error_ratio_record("1h") in e for e in exprs), "a burn-rate panel"
    assert {v["name"] for v in board["templating"]["list"]} >= {"region", "model", "version"}
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"


def test_every_burn_rate_alert_compares_both_windows_with_its_factor() -> None:
    rules = {r["alert"]: r for g in alerting.alert_rules()["groups"] for r in g["rules"]}
    for objective in slo.OBJECTIVES:
        for tier in slo.BURN_ALERTS:
            rule = rules[f"Edgestream{objective.name.capitalize()}Budget{tier.name}Burn"]
            for window in (tier.long_window, tier.short_window):
                assert f'{alerting.error_ratio_record(window)}{{slo="{objective.name}"}}' in rule["expr"]
            assert rule["expr"].count(f"({tier.factor:g} * {objective.budget:.4g})") == 2
            assert rule["labels"]["severity"] == tier.severity
    assert [(t.long_window, t.short_window, t.factor) for t in slo.BURN_ALERTS] == [
        ("1h", "5m", 14.4),
        ("6h", "30m", 6.0),
        ("3d", "6h", 1.0),
    ]
    assert (slo.LATENCY.target, slo.AVAILABILITY.target, slo.LATENCY_THRESHOLD_S) == (0.99, 0.999, 0.05)


def test_availability_counts_the_outcomes_the_worker_calls_its_own() -> None:
    assert {slo.ANSWERED, slo.FAILED} <= set(catalogue.OUTCOMES)
    assert slo.AVAILABILITY.total.format(window="5m") == (
        'sum by (region) (rate(edgestream_records_total{outcome=~"result|dead_letter"}[5m]))'
    )
    assert slo.AVAILABILITY.good.format(window="5m") == (
        'sum by (region) (rate(edgestream_records_total{outcome="result"}[5m]))'
    )


def test_the_latency_bucket_is_a_bucket_bound_of_the_histograms() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from edgestream.pipeline.observability.metrics import WorkerMetrics

    metrics = WorkerMetrics(region="r", node="n")
    metrics.model_info("m", 1, "00" * 32, "CPUExecutionProvider")
    text = generate_latest(metrics.registry).decode()
    bounds = {
        s.labels["le"]
        for family in text_string_to_metric_families(text)
        if family.name == catalogue.ROUND_TRIP
        for s in family.samples
        if s.name.endswith("_bucket")
    }
    assert slo.LATENCY_BUCKET in bounds
    assert float(slo.LATENCY_BUCKET) == slo.LATENCY_THRESHOLD_S
