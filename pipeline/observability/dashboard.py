"""The Grafana dashboard (``deploy/grafana/edgestream.json``), made from the SLOs and the metric names.

Per region, model and version (the dashboard's variables): round-trip percentiles, throughput, batch
sizes, where the time goes (queue wait, batch wait, inference, commit), consumer lag, dead letters by
reason, versions served and rollout stages, each SLO's burn rate over the alerts' windows, and per
region the device gateways' sessions, held replies, envelopes, replies and refusals.
``edgestream sla generate`` writes it with the Prometheus files; a test checks the committed copy.
"""

from __future__ import annotations

import json
from typing import Any, Final

from edgestream.pipeline.observability import slo
from edgestream.pipeline.observability.alerting import VERSIONS_SERVED, error_ratio_record
from edgestream.pipeline.observability.catalogue import (
    GATEWAY_AUTH_REFUSALS,
    GATEWAY_CONNECTIONS,
    GATEWAY_ENVELOPES,
    GATEWAY_HELD,
    GATEWAY_REPLIES,
    GATEWAY_SESSIONS,
)

UID: Final = "edgestream-slo"
"""The dashboard's Grafana uid (stable, so links to it survive a re-import)."""
SELECT: Final = 'region=~"$region", model=~"$model", version=~"$version"'
"""The label matchers of a series labelled by region, model and version, from the variables."""
SELECT_REGION: Final = 'region=~"$region"'
"""The label matcher of a series labelled by region only."""
RATE: Final = "$__rate_interval"
"""The range of every ``rate()``: Grafana's, at least four scrape intervals."""
_WIDTH: Final = 12
"""A panel's width in Grafana's 24-column grid: two panels a row."""
_HEIGHT: Final = 8
"""A panel's height in grid rows."""

Panel = dict[str, Any]
"""One Grafana panel."""


def _target(expr: str, legend: str, ref: int) -> dict[str, Any]:
    return {"refId": chr(ord("A") + ref), "expr": expr, "legendFormat": legend}


def _panel(title: str, unit: str, targets: list[tuple[str, str]], *, description: str = "") -> Panel:
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]}
        },
        "targets": [_target(expr, legend, i) for i, (expr, legend) in enumerate(targets)],
    }


def _quantiles(metric: str, by: str, legend: str) -> list[tuple[str, str]]:
    return [
        (
            f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{{{SELECT}}}[{RATE}])))",
            f"p{round(q * 100)} {legend}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


def _latency_panels() -> list[Panel]:
    version = "{{region}} {{model}} v{{version}}"
    stages = [
        (
            f"histogram_quantile(0.99, sum by (le, region) (rate(edgestream_{stage}_seconds_bucket"
            f"{{{SELECT}}}[{RATE}])))",
            f"{stage.replace('_', ' ')} p99 {{{{region}}}}",
        )
        for stage in ("queue_wait", "batch_wait", "inference")
    ]
    stages.append(
        (
            f"histogram_quantile(0.99, sum by (le, region) (rate(edgestream_commit_seconds_bucket"
            f"{{{SELECT_REGION}}}[{RATE}])))",
            "commit p99 {{region}}",
        )
    )
    return [
        _panel(
            "Round trip (capture -> reply) percentiles",
            "s",
            _quantiles("edgestream_round_trip_seconds", "region, model, version", version),
            description=f"The SLO: {slo.LATENCY.summary}.",
        ),
        _panel("Where the time goes (p99 per stage)", "s", stages),
    ]


def _flow_panels() -> list[Panel]:
    return [
        _panel(
            "Throughput (results per second)",
            "reqps",
            [
                (
                    f"sum by (region, model, version) (rate(edgestream_results_total{{{SELECT}}}[{RATE}]))",
                    "{{region}} {{model}} v{{version}}",
                ),
                (
                    f"sum by (region, outcome) (rate(edgestream_records_total{{{SELECT_REGION}}}[{RATE}]))",
                    "{{region}} {{outcome}}",
                ),
            ],
        ),
        _panel(
            "Batch sizes (records per inference call)",
            "short",
            [
                *_quantiles(
                    "edgestream_batch_size", "region, model, version", "{{region}} {{model}} v{{version}}"
                )[::2],
            ],
        ),
        _panel(
            "Consumer lag",
            "s",
            [
                (
                    f"max by (region, topic) (edgestream_consumer_lag_seconds{{{SELECT_REGION}}})",
                    "{{region}} {{topic}} (seconds)",
                ),
            ],
            description="Age of the oldest record not yet consumed, per topic (0 when caught up).",
        ),
        _panel(
            "Consumer lag (records)",
            "short",
            [
                (
                    f"sum by (region, topic) (edgestream_consumer_lag_records{{{SELECT_REGION}}})",
                    "{{region}} {{topic}}",
                ),
            ],
        ),
        _panel(
            "Dead letters by reason",
            "reqps",
            [
                (
                    "sum by (region, reason) "
                    f"(rate(edgestream_dead_letters_total{{{SELECT_REGION}}}[{RATE}]))",
                    "{{region}} {{reason}}",
                ),
            ],
        ),
    ]


def _version_panels() -> list[Panel]:
    return [
        _panel(
            "Versions served and rollout stages",
            "short",
            [
                (
                    f"count by (region, model, version) (edgestream_model_info{{{SELECT}}})",
                    "{{region}} {{model}} v{{version}} (workers serving)",
                ),
                (f'{VERSIONS_SERVED}{{{SELECT_REGION}, model=~"$model"}}', "{{region}} {{model}} versions"),
                (
                    "max by (model, version) "
                    '(edgestream_rollout_stage{model=~"$model", version=~"$version"})',
                    "rollout {{model}} v{{version}} (share of devices)",
                ),
            ],
        ),
        _panel(
            "Error budget burn rate",
            "short",
            [
                (
                    f'{error_ratio_record(window)}{{{SELECT_REGION}, slo="{objective.name}"}}'
                    f" / {objective.budget:.4g}",
                    f"{{{{region}}}} {objective.name} {window}",
                )
                for objective in slo.OBJECTIVES
                for window in ("5m", "1h", "6h")
            ],
            description="1 spends the budget exactly over "
            f"{slo.PERIOD}; the alerts page at "
            + " and ".join(f"{t.factor:g}" for t in slo.BURN_ALERTS if t.severity == "page"),
        ),
    ]


def _gateway_panels() -> list[Panel]:
    def per_second(metric: str, by: str, legend: str) -> tuple[str, str]:
        return (f"sum by (region, {by}) (rate({metric}{{{SELECT_REGION}}}[{RATE}]))", legend)

    return [
        _panel(
            "Device gateways: sessions and held replies",
            "short",
            [
                (f"sum by (region) ({GATEWAY_SESSIONS}{{{SELECT_REGION}}})", "{{region}} sessions"),
                (f"sum by (region) ({GATEWAY_CONNECTIONS}{{{SELECT_REGION}}})", "{{region}} connections"),
                (f"sum by (region) ({GATEWAY_HELD}{{{SELECT_REGION}}})", "{{region}} replies held"),
            ],
            description="Held: replies waiting in mailboxes for devices that are away.",
        ),
        _panel(
            "Device gateways: envelopes, replies and refusals per second",
            "reqps",
            [
                per_second(GATEWAY_ENVELOPES, "outcome", "{{region}} envelopes {{outcome}}"),
                per_second(GATEWAY_REPLIES, "outcome", "{{region}} replies {{outcome}}"),
                per_second(GATEWAY_AUTH_REFUSALS, "reason", "{{region}} refused {{reason}}"),
            ],
        ),
    ]


def _variable(name: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": query, "refId": name},
        "definition": query,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
        "refresh": 2,
        "sort": 1,
    }


def dashboard() -> dict[str, Any]:
    """The dashboard, as Grafana imports it."""
    panels = [*_latency_panels(), *_flow_panels(), *_version_panels(), *_gateway_panels()]
    for i, panel in enumerate(panels):
        panel["id"] = i + 1
        panel["gridPos"] = {"x": (i % 2) * _WIDTH, "y": (i // 2) * _HEIGHT, "w": _WIDTH, "h": _HEIGHT}
    datasource = {"name": "datasource", "type": "datasource", "query": "prometheus", "current": {}}
    return {
        "uid": UID,
        "title": "edgestream: SLOs, latency, flow and versions",
        "tags": ["edgestream"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "templating": {
            "list": [
                datasource,
                _variable("region", "label_values(edgestream_model_info, region)"),
                _variable("model", 'label_values(edgestream_model_info{region=~"$region"}, model)'),
                _variable("version", 'label_values(edgestream_model_info{model=~"$model"}, version)'),
            ]
        },
        "panels": panels,
    }


def dashboard_json() -> str:
    """:func:`dashboard` as the committed file's text."""
    return json.dumps(dashboard(), indent=2, sort_keys=True) + "\n"


def expressions(board: dict[str, Any]) -> list[str]:
    """Every PromQL expression in ``board``: its panels' targets and its variables' queries."""
    exprs = [t["expr"] for panel in board["panels"] for t in panel.get("targets", [])]
    exprs += [v["definition"] for v in board["templating"]["list"] if v.get("type") == "query"]
    return exprs
