"""The metric names each edgestream process exposes: from the metrics catalogue
(``pipeline/observability/catalogue.py``) when it is importable, else from a copy of the names fixed for
issue 14, so that the rules and the dashboard are checked either way."""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable
from typing import Final

SPEC_WORKER: Final[frozenset[str]] = frozenset(
    {
        "edgestream_records_consumed_total",
        "edgestream_results_total",
        "edgestream_dead_letters_total",
        "edgestream_transactions_total",
        "edgestream_rewinds_total",
        "edgestream_registry_refused_total",
        "edgestream_end_to_end_seconds",
        "edgestream_unit_seconds",
        "edgestream_in_flight_records",
        "edgestream_partitions_assigned",
        "edgestream_paused",
        "edgestream_model_info",
        "edgestream_inference_seconds",
        "edgestream_batch_size",
        "edgestream_round_trip_seconds",
        "edgestream_queue_wait_seconds",
        "edgestream_batch_wait_seconds",
        "edgestream_commit_seconds",
        "edgestream_records_total",
        "edgestream_device_fallbacks_total",
        "edgestream_refusals_total",
        "edgestream_consumer_lag_records",
        "edgestream_consumer_lag_seconds",
        "edgestream_registry_revision",
        "edgestream_ready",
    }
)
"""The edge worker's metrics as fixed for issue 14."""
SPEC_AGGREGATOR: Final[frozenset[str]] = frozenset(
    {
        "edgestream_aggregator_records_total",
        "edgestream_aggregator_windows_total",
        "edgestream_aggregator_drift_flagged_total",
        "edgestream_consumer_lag_records",
        "edgestream_consumer_lag_seconds",
        "edgestream_ready",
    }
)
"""The aggregator's metrics as fixed for issue 14."""
SPEC_ROLLOUT: Final[frozenset[str]] = frozenset(
    {
        "edgestream_rollout_stage",
        "edgestream_rollout_advances_total",
        "edgestream_rollout_rollbacks_total",
        "edgestream_registry_revision",
        "edgestream_ready",
    }
)
"""The rollout controller's metrics as fixed for issue 14."""
PROMETHEUS_OWN: Final[frozenset[str]] = frozenset({"up"})
"""Series Prometheus itself writes for every target."""
HISTOGRAM_SUFFIXES: Final[tuple[str, ...]] = ("_bucket", "_count", "_sum")
"""Suffixes of a histogram's series."""
_NAME: Final = re.compile(r"(?<![\w:])(edgestream_[a-z0-9_]+|up)(?![\w:])")


def _catalogue() -> tuple[frozenset[str], frozenset[str], frozenset[str]] | None:
    try:
        module = importlib.import_module("edgestream.pipeline.observability.catalogue")
    except ImportError:
        return None
    return tuple(  # type: ignore[return-value]
        frozenset(getattr(module, name))
        for name in ("METRICS_WORKER", "METRICS_AGGREGATOR", "METRICS_ROLLOUT")
    )


def exposed() -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
    """The worker's, the aggregator's and the rollout controller's metric names."""
    return _catalogue() or (SPEC_WORKER, SPEC_AGGREGATOR, SPEC_ROLLOUT)


def used(expressions: Iterable[str]) -> set[str]:
    """The raw metric names PromQL ``expressions`` select (recording rules' ``a:b:c`` names excluded)."""
    names: set[str] = set()
    for expr in expressions:
        names.update(m.group(1) for m in _NAME.finditer(expr))
    return names


def known(name: str, exposed_names: frozenset[str]) -> bool:
    """Whether ``name`` (or the histogram it is a series of) is among ``exposed_names``."""
    if name in exposed_names or name in PROMETHEUS_OWN:
        return True
    return any(name.endswith(s) and name.removesuffix(s) in exposed_names for s in HISTOGRAM_SUFFIXES)
