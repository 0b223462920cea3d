"""The generated rules under ``promtool``: they check, and each alert fires on synthetic series that
should fire it and stays silent on series that should not (``promtool test rules``).

Skipped with a message where ``promtool`` is not installed (``make promtool`` installs Debian's
``prometheus`` package, which has it)."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgestream.pipeline.observability import alerting
from edgestream.pipeline.observability.generated import PROMETHEUS_DIR

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed: `make promtool` (Debian's prometheus package)"
)

WORKER = 'region="eu-west", node="n1", job="edgestream-workers", instance="w1:8080"'
"""Labels of one scraped edge worker's series."""
REGION = {"region": "eu-west"}
"""Labels an alert aggregated by region keeps."""
EMBEDDING = 'model="embedding-scorer"'
"""The model label of the round-trip series."""


@dataclass(frozen=True)
class Case:
    """Synthetic series, when to evaluate, and the alerts expected then (none: it stays silent)."""

    what: str
    series: dict[str, str]
    eval_time: str
    expect: list[dict[str, str]] = field(default_factory=list)
    interval: str = "1m"


def _latency(slow_share: float, steps: int, per: int = 1000) -> dict[str, str]:
    good = round(per * (1 - slow_share))
    return {
        f'edgestream_round_trip_seconds_count{{{WORKER}, {EMBEDDING}, version="3"}}': f"0+{per}x{steps}",
        f'edgestream_round_trip_seconds_bucket{{{WORKER}, {EMBEDDING}, version="3", le="0.05"}}': (
            f"0+{good}x{steps}"
        ),
    }


def _availability(
    failed_share: float, steps: int, outcome: str = "dead_letter", per: int = 10000
) -> dict[str, str]:
    """Records answered and, ``failed_share`` of them, counted under ``outcome``."""
    failed = round(per * failed_share)
    return {
        f'edgestream_records_total{{{WORKER}, outcome="result"}}': f"0+{per - failed}x{steps}",
        f'edgestream_records_total{{{WORKER}, outcome="{outcome}"}}': f"0+{failed}x{steps}",
    }


def _burn(slo_name: str, severity: str) -> dict[str, str]:
    return {**REGION, "severity": severity, "slo": slo_name}


def _lag(values: str, job: str = "edgestream-workers") -> dict[str, str]:
    labels = f'region="eu-west", node="n1", job="{job}", topic="edge.eu-west.ingest.embedding", partition="0"'
    return {f"edgestream_consumer_lag_seconds{{{labels}}}": values}


def _served(*versions: tuple[str, str]) -> dict[str, str]:
    return {
        f'edgestream_model_info{{region="eu-west", node="{node}", job="edgestream-workers", {EMBEDDING}, '
        f'version="{version}", sha256="00", provider="CPUExecutionProvider"}}': "1x40"
        for node, version in versions
    }


def _stage(version: str, share: float) -> dict[str, str]:
    labels = f'region="cloud", node="c1", job="edgestream-rollout", {EMBEDDING}, version="{version}"'
    return {f"edgestream_rollout_stage{{{labels}}}": f"{share}x40"}


def _dead_letters(per: float, records_per: float, steps: int = 30) -> dict[str, str]:
    return {
        f'edgestream_dead_letters_total{{{WORKER}, reason="bad_tag"}}': f"0+{per}x{steps}",
        f'edgestream_records_total{{{WORKER}, outcome="dead_letter"}}': f"0+{per}x{steps}",
        f'edgestream_records_total{{{WORKER}, outcome="result"}}': f"0+{records_per - per}x{steps}",
    }


NOT_READY = {"node": "n1", "job": "edgestream-workers", "instance": "w1:8080", **REGION, "severity": "page"}
GATEWAY = 'region="eu-west", node="gw1", job="edgestream-gateways", instance="g1:8444"'
"""Labels of one scraped device gateway's series."""
GATEWAY_DOWN = {
    "node": "gw1",
    "job": "edgestream-gateways",
    "instance": "g1:8444",
    **REGION,
    "severity": "page",
}
LAG = {**REGION, "topic": "edge.eu-west.ingest.embedding", "severity": "page"}
DRIFT = {**REGION, "model": "embedding-scorer", "severity": "ticket"}

CASES: dict[str, list[Case]] = {
    "EdgestreamLatencyBudgetFastBurn": [
        Case("20% slow for 70 min", _latency(0.20, 90), "70m", [_burn("latency", "page")]),
        Case("10% slow: under 14.4x", _latency(0.10, 90), "70m"),
        Case(
            "40% slow for an hour, then none: the 5 min window has recovered",
            {**_latency(0.40, 60), **{k: v for k, v in _latency(0.0, 90).items() if "count" in k}}
            | {
                f'edgestream_round_trip_seconds_bucket{{{WORKER}, {EMBEDDING}, version="3", le="0.05"}}': (
                    "0+600x60 37000+1000x29"
                )
            },
            "75m",
        ),
    ],
    "EdgestreamLatencyBudgetMediumBurn": [
        Case("10% slow for 7 h", _latency(0.10, 84), "6h30m", [_burn("latency", "page")], "5m"),
        Case("5% slow: under 6x", _latency(0.05, 84), "6h30m", interval="5m"),
    ],
    # The 3-day window reads the hours of series a case has (rate() over what exists), which is enough
    # to show both windows and the factor at work.
    "EdgestreamLatencyBudgetSlowBurn": [
        Case("2% slow for 8 h", _latency(0.02, 100), "8h", [_burn("latency", "ticket")], "5m"),
        Case("0.5% slow: within budget", _latency(0.005, 100), "8h", interval="5m"),
        Case(
            "3% slow for 4 h, then none for 6 h: the 6 h window has recovered",
            {k: "0+1000x120" for k in _latency(0.0, 0) if "count" in k}
            | {k: "0+970x48 47560+1000x71" for k in _latency(0.0, 0) if "bucket" in k},
            "10h",
            interval="5m",
        ),
    ],
    "EdgestreamAvailabilityBudgetFastBurn": [
        Case("3% failed inference", _availability(0.03, 90), "70m", [_burn("availability", "page")]),
        Case("3% dead letters of bad input (the device's fault)", _availability(0.03, 90, "refused"), "70m"),
        Case("1% failed: under 14.4x", _availability(0.01, 90), "70m"),
    ],
    "EdgestreamAvailabilityBudgetMediumBurn": [
        Case("1% failed for 7 h", _availability(0.01, 84), "6h30m", [_burn("availability", "page")], "5m"),
        Case("0.3% failed: under 6x", _availability(0.003, 84), "6h30m", interval="5m"),
    ],
    "EdgestreamAvailabilityBudgetSlowBurn": [
        Case("0.3% failed for 8 h", _availability(0.003, 100), "8h", [_burn("availability", "ticket")], "5m"),
        Case("0.05% failed: within budget", _availability(0.0005, 100), "8h", interval="5m"),
    ],
    "EdgestreamConsumerLag": [
        Case("lag grows past 5 s and stays", _lag("0 1 2 8 9 10 12 15 20 25"), "8m", [LAG]),
        Case("one lagging scrape", _lag("0 0 8 0 0 0 0 0 0 0"), "8m"),
        Case("the aggregator's lag is not the edge's", _lag("400x10", "edgestream-aggregator"), "8m"),
    ],
    "EdgestreamAggregatorLag": [
        Case(
            "10 min behind",
            _lag("600x20", "edgestream-aggregator"),
            "15m",
            [{"topic": "edge.eu-west.ingest.embedding", "severity": "ticket"}],
        ),
        Case("1 min behind", _lag("60x20", "edgestream-aggregator"), "15m"),
    ],
    "EdgestreamVersionDrift": [
        Case("two versions, no rollout", _served(("n1", "3"), ("n2", "4")), "20m", [DRIFT]),
        Case(
            "two versions during a canary", {**_served(("n1", "3"), ("n2", "4")), **_stage("4", 0.25)}, "20m"
        ),
        Case(
            "three versions during a canary",
            {**_served(("n1", "3"), ("n2", "4"), ("n3", "2")), **_stage("4", 0.25), **_stage("3", 1)},
            "20m",
            [DRIFT],
        ),
        Case(
            "two versions after the canary became stable",
            {**_served(("n1", "3"), ("n2", "4")), **_stage("4", 1)},
            "20m",
            [DRIFT],
        ),
        Case("every worker on one version", _served(("n1", "4"), ("n2", "4")), "20m"),
    ],
    "EdgestreamDeadLetterSpike": [
        Case(
            "10% of records dead-lettered",
            _dead_letters(10, 100),
            "20m",
            [{**REGION, "reason": "bad_tag", "severity": "ticket"}],
        ),
        Case("2% of records dead-lettered", _dead_letters(2, 100), "20m"),
        Case("a quiet region: 50% but 5 in 10 min", _dead_letters(0.5, 1), "20m"),
    ],
    "EdgestreamWorkerNotReady": [
        Case("says not ready", {f"edgestream_ready{{{WORKER}}}": "1 1 0 0 0 0 0 0"}, "6m", [NOT_READY]),
        Case(
            "cannot be scraped",
            {'up{job="edgestream-workers", instance="w1:8080"}': "0x8"},
            "6m",
            [{"job": "edgestream-workers", "instance": "w1:8080", "severity": "page"}],
        ),
        Case(
            "ready",
            {
                f"edgestream_ready{{{WORKER}}}": "1x8",
                'up{job="edgestream-workers", instance="w1:8080"}': "1x8",
            },
            "6m",
        ),
        Case("one not-ready scrape", {f"edgestream_ready{{{WORKER}}}": "1 0 1 1 1 1 1 1"}, "6m"),
    ],
    "EdgestreamGatewayNotReady": [
        Case("says not ready", {f"edgestream_ready{{{GATEWAY}}}": "1 1 0 0 0 0 0 0"}, "6m", [GATEWAY_DOWN]),
        Case(
            "cannot be scraped",
            {'up{job="edgestream-gateways", instance="g1:8444"}': "0x8"},
            "6m",
            [{"job": "edgestream-gateways", "instance": "g1:8444", "severity": "page"}],
        ),
        Case("ready", {f"edgestream_ready{{{GATEWAY}}}": "1x8"}, "6m"),
        Case(
            "a worker down is not a gateway",
            {'up{job="edgestream-workers", instance="w1:8080"}': "0x8"},
            "6m",
        ),
    ],
    "EdgestreamGatewayRepliesDropped": [
        Case(
            "replies dropped for 10 minutes",
            {f'edgestream_gateway_replies_total{{{GATEWAY}, outcome="dropped"}}': "0+3x20"},
            "15m",
            [{**REGION, "severity": "ticket"}],
        ),
        Case(
            "replies routed, held and expired, none dropped",
            {
                f'edgestream_gateway_replies_total{{{GATEWAY}, outcome="routed"}}': "0+500x20",
                f'edgestream_gateway_replies_total{{{GATEWAY}, outcome="expired"}}': "0+5x20",
                f'edgestream_gateway_replies_total{{{GATEWAY}, outcome="dropped"}}': "0x20",
            },
            "15m",
        ),
    ],
    "EdgestreamControlPlaneNotReady": [
        Case(
            "the rollout controller is down",
            {'up{job="edgestream-rollout", instance="r1:8090"}': "0x20"},
            "15m",
            [{"job": "edgestream-rollout", "instance": "r1:8090", "severity": "ticket"}],
        ),
        Case(
            "a worker down is not the control plane",
            {'up{job="edgestream-workers", instance="w1:8080"}': "0x20"},
            "15m",
        ),
        Case(
            "the aggregator is ready",
            {'edgestream_ready{job="edgestream-aggregator", instance="a1:6066"}': "1x20"},
            "15m",
        ),
    ],
}
"""Per alert: at least one case that fires it and one that leaves it silent."""

_LABEL = re.compile(r"\{\{ \$labels\.(\w+) \}\}")


def _annotations(alert: str, labels: dict[str, str]) -> dict[str, str]:
    """The alert's annotations as Prometheus renders them for ``labels`` (they template only labels)."""
    rule = next(r for g in alerting.alert_rules()["groups"] for r in g["rules"] if r["alert"] == alert)
    return {k: _LABEL.sub(lambda m: labels.get(m.group(1), ""), v) for k, v in rule["annotations"].items()}


def _test(alert: str, case: Case) -> dict[str, Any]:
    return {
        "name": f"{alert}: {case.what}",
        "interval": case.interval,
        "input_series": [{"series": s, "values": v} for s, v in case.series.items()],
        "alert_rule_test": [
            {
                "eval_time": case.eval_time,
                "alertname": alert,
                "exp_alerts": [
                    {"exp_labels": labels, "exp_annotations": _annotations(alert, labels)}
                    for labels in case.expect
                ],
            }
        ],
    }


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_every_alert_has_a_case_that_fires_and_one_that_stays_silent() -> None:
    assert sorted(CASES) == sorted(alerting.alert_names())
    for alert, cases in CASES.items():
        assert any(c.expect for c in cases), alert
        assert any(not c.expect for c in cases), alert


def test_promtool_checks_the_config_and_the_rules() -> None:
    prometheus = REPO_ROOT / PROMETHEUS_DIR
    done = _promtool("check", "config", "prometheus.yml", cwd=prometheus)
    assert done.returncode == 0, done.stdout + done.stderr
    done = _promtool("check", "rules", "rules/recording.yml", "rules/alerts.yml", cwd=prometheus)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 14 rules found" in done.stdout


@pytest.mark.parametrize("alert", sorted(CASES))
def test_promtool_unit_tests_of_the_alert(alert: str, tmp_path: Path) -> None:
    rules = REPO_ROOT / PROMETHEUS_DIR / "rules"
    spec = {
        "rule_files": [str(rules / "recording.yml"), str(rules / "alerts.yml")],
        # Hours-long cases step 4 min: within the 5 min lookback an alert reads a recorded ratio with.
        "evaluation_interval": "1m" if all(c.interval == "1m" for c in CASES[alert]) else "4m",
        "tests": [_test(alert, case) for case in CASES[alert]],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(spec, sort_keys=False))
    done = _promtool("test", "rules", "test.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
