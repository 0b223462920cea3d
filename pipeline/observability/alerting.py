"""The Prometheus side of the SLOs: scrape config, recording rules and alert rules, made from ``slo``.

``edgestream sla generate`` writes what these functions return into ``deploy/prometheus/``; a test checks
that the committed files equal them, so the rules never drift from the declared objectives.

Recording rules: ``edgestream:slo_error_ratio:rate<window>{slo, region}`` (the share of bad events),
``edgestream:model_versions_served:count{region, model}`` and
``edgestream:model_versions_allowed:count{model}``. Alerts: two burn-rate tiers that page and one that
files a ticket per SLO, and the symptoms the SLOs do not name: consumer lag in seconds, version drift,
dead-letter spikes, a worker or a device gateway not ready, replies a gateway dropped. Annotations
template only ``$labels`` (never ``$value``), so a unit test can say exactly what they read.
"""

from __future__ import annotations

from typing import Any, Final

from edgestream.pipeline.observability import slo
from edgestream.pipeline.observability.catalogue import GATEWAY_REPLIES
from edgestream.pipeline.observability.slo import BurnAlert, Objective

JOB_WORKERS: Final = "edgestream-workers"
"""Scrape job of the edge workers (``edgestream worker``, ``--health-port``'s ``/metrics``)."""
JOB_GATEWAYS: Final = "edgestream-gateways"
"""Scrape job of the device gateways (``edgestream gateway``, ``/metrics`` on
``EDGESTREAM_GATEWAY_HEALTH_PORT``)."""
JOB_AGGREGATOR: Final = "edgestream-aggregator"
"""Scrape job of the cloud aggregator (``edgestream aggregate run``)."""
JOB_ROLLOUT: Final = "edgestream-rollout"
"""Scrape job of the rollout controller (``edgestream rollout watch --health-port``)."""
JOBS: Final[tuple[tuple[str, str], ...]] = (
    (JOB_WORKERS, "workers"),
    (JOB_GATEWAYS, "gateways"),
    (JOB_AGGREGATOR, "aggregator"),
    (JOB_ROLLOUT, "rollout"),
)
"""Each scrape job and the stem of its ``targets/<stem>.json`` file."""
RULE_GROUP_INTERVAL: Final = "30s"
"""How often the rule groups are evaluated."""
RUNBOOK: Final = "docs/observability.md#slos-alerts-and-dashboards"
"""Where each alert is explained (its ``runbook`` annotation)."""

Doc = dict[str, Any]
"""A YAML document, as :func:`~edgestream.pipeline.observability.yamltext.dump` writes it."""


def error_ratio_record(window: str) -> str:
    """Name of the recording rule holding each SLO's error ratio over ``window``."""
    return f"edgestream:slo_error_ratio:rate{window}"


VERSIONS_SERVED: Final = "edgestream:model_versions_served:count"
"""Recording rule: distinct versions of a model the workers of a region serve (``edgestream_model_info``)."""
VERSIONS_ALLOWED: Final = "edgestream:model_versions_allowed:count"
"""Recording rule: versions of a model a rollout allows at once: 2 while a canary is between 0 and 1
(the stable version and the canary), else 1."""


def scrape_config() -> Doc:
    """``prometheus.yml``: the jobs, discovered from ``targets/*.json`` files, and the rules."""
    return {
        "global": {"scrape_interval": "15s", "evaluation_interval": RULE_GROUP_INTERVAL},
        "rule_files": ["rules/recording.yml", "rules/alerts.yml"],
        "scrape_configs": [
            {
                "job_name": job,
                "metrics_path": "/metrics",
                "file_sd_configs": [{"files": [f"targets/{stem}.json"], "refresh_interval": "1m"}],
            }
            for job, stem in JOBS
        ],
    }


def recording_rules() -> Doc:
    """``rules/recording.yml``: each SLO's error ratio per region and window, and versions served."""
    ratios = [
        {
            "record": error_ratio_record(window),
            "expr": objective.error_ratio(window),
            "labels": {"slo": objective.name},
        }
        for objective in slo.OBJECTIVES
        for window in slo.WINDOWS
    ]
    versions = [
        {
            "record": VERSIONS_SERVED,
            "expr": "count by (region, model) (\n"
            "  count by (region, model, version) (edgestream_model_info == 1)\n)",
        },
        {
            "record": VERSIONS_ALLOWED,
            "expr": "1 + max by (model) ((edgestream_rollout_stage > 0) < bool 1)",
        },
    ]
    return {
        "groups": [
            {"name": "edgestream-slo", "interval": RULE_GROUP_INTERVAL, "rules": ratios},
            {"name": "edgestream-versions", "interval": RULE_GROUP_INTERVAL, "rules": versions},
        ]
    }


def _burn_alert(objective: Objective, tier: BurnAlert) -> Doc:
    threshold = f"{tier.factor:g} * {objective.budget:.4g}"
    selector = f'{{slo="{objective.name}"}}'
    return {
        "alert": f"Edgestream{objective.name.capitalize()}Budget{tier.name}Burn",
        "expr": (
            f"{error_ratio_record(tier.long_window)}{selector} > ({threshold})\n"
            f"and\n{error_ratio_record(tier.short_window)}{selector} > ({threshold})"
        ),
        "for": tier.for_,
        "labels": {"severity": tier.severity, "slo": objective.name},
        "annotations": {
            "summary": f"{{{{ $labels.region }}}}: the {objective.name} SLO burns its budget at "
            f"over {tier.factor:g}x ({tier.long_window} and {tier.short_window})",
            "description": f"SLO: {objective.summary}. Over both the last {tier.long_window} and "
            f"{tier.short_window} more than {tier.factor * objective.budget * 100:.3g}% of events were bad: "
            f"{tier.spends()}.",
            "runbook": RUNBOOK,
        },
    }


def _symptom_alerts() -> list[Doc]:
    lag_s = slo.CONSUMER_LAG_MAX_S
    share = slo.DEAD_LETTER_SHARE_MAX
    dead_10m = "sum by (region, reason) (increase(edgestream_dead_letters_total[10m]))"
    records_10m = "sum by (region) (increase(edgestream_records_total[10m]))"
    return [
        _alert(
            "EdgestreamConsumerLag",
            f'max by (region, topic) (edgestream_consumer_lag_seconds{{job="{JOB_WORKERS}"}}) > {lag_s:g}',
            "2m",
            "page",
            "{{ $labels.region }}: {{ $labels.topic }} is over " + f"{lag_s:g} s behind",
            f"The oldest record a worker has not consumed is over {lag_s:g} s old: devices are falling back "
            "to their local model. The workers are too few, stalled or not ready.",
        ),
        _alert(
            "EdgestreamAggregatorLag",
            f'max by (topic) (edgestream_consumer_lag_seconds{{job="{JOB_AGGREGATOR}"}}) '
            f"> {slo.AGGREGATOR_LAG_MAX_S:g}",
            "10m",
            "ticket",
            "the aggregator is over " + f"{slo.AGGREGATOR_LAG_MAX_S:g} s behind on " + "{{ $labels.topic }}",
            "Cloud windows close late (nothing is lost): drift judgements and rollouts wait.",
        ),
        _alert(
            "EdgestreamVersionDrift",
            f"(\n  {VERSIONS_SERVED}\n    > on (model) group_left () {VERSIONS_ALLOWED}\n)\nor\n"
            f"(\n  {VERSIONS_SERVED} > 1\n    unless on (model) {VERSIONS_ALLOWED}\n)",
            "15m",
            "ticket",
            "{{ $labels.region }}: more versions of {{ $labels.model }} served than its rollout allows",
            "The region's workers serve more versions of the model than its rollout allows (one, or two "
            "while a canary runs): a worker did not apply the registry's state.",
        ),
        _alert(
            "EdgestreamDeadLetterSpike",
            f"(\n  {dead_10m}\n    / on (region) group_left () {records_10m}\n) > {share:g}\n"
            f"and\n{dead_10m} >= {slo.DEAD_LETTER_MIN_COUNT}",
            "5m",
            "ticket",
            "{{ $labels.region }}: over "
            + f"{share:.0%}"
            + " of records dead-lettered as {{ $labels.reason }}",
            f"One dead-letter reason takes over {share:.0%} of the region's records (10 min). "
            "`edgestream dlq` shows them.",
        ),
        _alert(
            "EdgestreamWorkerNotReady",
            f'edgestream_ready{{job="{JOB_WORKERS}"}} == 0\nor\nup{{job="{JOB_WORKERS}"}} == 0',
            "2m",
            "page",
            "worker {{ $labels.instance }} is not ready",
            "The worker says it is not ready (no partitions, models not loaded, broker unreachable) or "
            "cannot be scraped; its partitions wait for a rebalance.",
        ),
        _alert(
            "EdgestreamGatewayNotReady",
            f'edgestream_ready{{job="{JOB_GATEWAYS}"}} == 0\nor\nup{{job="{JOB_GATEWAYS}"}} == 0',
            "2m",
            "page",
            "device gateway {{ $labels.instance }} is not ready",
            "The gateway says it is not ready (its Kafka clients are not started) or cannot be scraped: "
            "its devices answer from their local fallback and fail over to the next nearest region "
            '(docs/gateway.md, "Measured").',
        ),
        _alert(
            "EdgestreamGatewayRepliesDropped",
            f'sum by (region) (increase({GATEWAY_REPLIES}{{outcome="dropped"}}[10m])) > 0',
            "5m",
            "ticket",
            "{{ $labels.region }}: the device gateway drops replies held for absent devices",
            "Devices away for long get more replies than a mailbox holds (hold_max): the oldest are "
            "dropped. Their devices answered those calls from the fallback; raise hold_max or look for "
            "devices that never come back.",
        ),
        _alert(
            "EdgestreamControlPlaneNotReady",
            f'edgestream_ready{{job=~"{JOB_AGGREGATOR}|{JOB_ROLLOUT}"}} == 0\n'
            f'or\nup{{job=~"{JOB_AGGREGATOR}|{JOB_ROLLOUT}"}} == 0',
            "10m",
            "ticket",
            "{{ $labels.job }} {{ $labels.instance }} is not ready",
            "The aggregator or the rollout controller is down or not ready: no new windows, no rollout "
            "stage advances (the edge keeps serving).",
        ),
    ]


def _alert(name: str, expr: str, for_: str, severity: str, summary: str, description: str) -> Doc:
    return {
        "alert": name,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity},
        "annotations": {"summary": summary, "description": description, "runbook": RUNBOOK},
    }


def alert_rules() -> Doc:
    """``rules/alerts.yml``: the burn-rate alerts of every SLO, then the symptom alerts."""
    burns = [_burn_alert(objective, tier) for objective in slo.OBJECTIVES for tier in slo.BURN_ALERTS]
    return {
        "groups": [
            {"name": "edgestream-slo-burn", "interval": RULE_GROUP_INTERVAL, "rules": burns},
            {"name": "edgestream-symptoms", "interval": RULE_GROUP_INTERVAL, "rules": _symptom_alerts()},
        ]
    }


def alert_names() -> list[str]:
    """Every alert :func:`alert_rules` defines."""
    return [rule["alert"] for group in alert_rules()["groups"] for rule in group["rules"]]
