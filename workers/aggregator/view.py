"""The aggregator's view: one JSON-ready row per window (summary counters, the label join's quality,
drift judged against its reference), computed from the faust tables' values.

Drift thresholds come from ``thresholds`` (``calibration.threshold`` by default: a simulation where a
key was not simulated before). The app passes `Thresholds`, which never simulates on the event loop: a
window whose threshold is still being simulated gets a *pending* drift (not judged, not flagged;
``pending_drift``), and ``Thresholds.judged`` computes the rows again from the same counts
(`joined_rows`) once the thread has simulated what they wait for.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

from edgestream.pipeline.contract.cloud import percentile_ms
from edgestream.pipeline.learning.calibration import FALSE_POSITIVE_RATE, threshold
from edgestream.pipeline.learning.drift import FeatureReference, ThresholdFn, drift_report
from edgestream.workers.aggregator import windows as w
from edgestream.workers.aggregator.references import kind_reference
from edgestream.workers.aggregator.thresholds import ThresholdPending

log = logging.getLogger(__name__)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def window_rows(
    summary_windows: dict[str, w.State],
    quality_windows: list[tuple[str, w.State]],
    references: Mapping[tuple[str, int], FeatureReference] | None = None,
    *,
    false_positive_rate: float = FALSE_POSITIVE_RATE,
    source_rows: int | None = None,
    thresholds: ThresholdFn = threshold,
) -> list[dict[str, Any]]:
    """The view: one row per window (summary or join counters), oldest first, JSON-ready; each row's
    drift carries the thresholds it was judged by, calibrated to its sample count (or is pending, see
    the module).

    The score distribution's drift is against the first window still held for the same (region, model,
    version): the edge sends no reference scores, and the training scores need the model (not done).
    """
    return joined_rows(
        summary_windows,
        w.sum_quality(quality_windows),
        references,
        false_positive_rate=false_positive_rate,
        source_rows=source_rows,
        thresholds=thresholds,
    )


def joined_rows(
    summary_windows: Mapping[str, w.State],
    joined: Mapping[str, w.State],
    references: Mapping[tuple[str, int], FeatureReference] | None = None,
    *,
    false_positive_rate: float = FALSE_POSITIVE_RATE,
    source_rows: int | None = None,
    thresholds: ThresholdFn = threshold,
) -> list[dict[str, Any]]:
    """`window_rows` of quality windows already added up over the partitions (``windows.sum_quality``,
    which copies their counts) and of summary windows as `frozen_summaries` copies them: computed
    again from the same arguments, a row is judged from the same counts while the agents go on adding
    to the tables."""
    parsed: dict[str, tuple[str, str, int, int]] = {}
    for key in set(summary_windows) | set(joined):
        try:
            parsed[key] = w.parse_window_key(key)
        except ValueError:  # a corrupted table value: the other windows are still served
            log.warning("left out of the view: %r is no window key", key)
    keys = sorted(parsed, key=lambda k: (parsed[k][3], k))
    first_scores: dict[str, list[int]] = {}
    rows: list[dict[str, Any]] = []
    for key in keys:
        region, model, version, start = parsed[key]
        summary = summary_windows.get(key)
        quality = joined.get(key, {"samples": 0, "joined": 0, "correct": 0, "features": None})
        results = summary["results"] if summary else 0
        dead = sum(summary["dead_letters"].values()) if summary else 0
        latency = summary["latency"] if summary else []
        scores = summary["scores"] if summary else None
        series = key.rpartition("@")[0]
        baseline = first_scores.get(series)
        if baseline is None and scores is not None and sum(scores) > 0:
            first_scores[series] = scores
        own = (references or {}).get((model, version))
        reference = own or kind_reference(model)
        try:
            report = drift_report(
                reference,
                quality["features"] if reference is not None else None,
                score_reference=baseline,
                score_counts=scores,
                false_positive_rate=false_positive_rate,
                source_rows=source_rows,
                thresholds=thresholds,
            )
            drift = {**report.to_dict(), "pending": False}
        except ThresholdPending:
            drift = pending_drift(quality["features"] if reference is not None else None, false_positive_rate)
        except Exception as err:  # counts the tests cannot take: this window unjudged, the others judged
            log.warning("the drift of window %r cannot be judged: %r", key, err)
            drift = {
                **pending_drift(quality["features"] if reference is not None else None, false_positive_rate),
                "error": repr(err)[:200],
            }
        rows.append(
            {
                "key": key,
                "region": region,
                "model": model,
                "version": version,
                "start_ms": start,
                "summaries": summary["summaries"] if summary else 0,
                "results": results,
                "dead_letters": dict(summary["dead_letters"]) if summary else {},
                "dead_letter_rate": dead / (results + dead) if results + dead else None,
                "latency_ms": {f"p{p}": _finite(percentile_ms(latency, p)) for p in w.PERCENTILES},
                "latency_buckets": latency,
                "labels": dict(summary["labels"]) if summary else {},
                "scores": scores,
                "samples": quality["samples"],
                "joined": quality["joined"],
                "accuracy": quality["correct"] / quality["joined"] if quality["joined"] else None,
                "drift": {
                    **drift,
                    "reference": "version" if own is not None else "training" if reference else None,
                },
            }
        )
    return rows


def frozen_summaries(summary_windows: Iterable[tuple[str, w.State]]) -> dict[str, w.State]:
    """The summary windows as they are now: each value copied, with the maps ``windows.add_summary``
    adds into in place (it replaces its count lists and numbers; a reference to the table's value
    would see the next summary's scores)."""
    return {
        key: {**state, "labels": dict(state["labels"]), "dead_letters": dict(state["dead_letters"])}
        for key, state in summary_windows
    }


def pending_drift(features: list[list[int]] | None, false_positive_rate: float) -> dict[str, Any]:
    """The drift of a window whose thresholds are still being simulated: the keys of
    ``DriftReport.to_dict`` with nothing judged (not flagged) and ``pending`` true."""
    return {
        "feature_psi": [],
        "score_psi": None,
        "samples": int(sum(features[0])) if features else 0,
        "max_psi": None,
        "worst_feature": None,
        "worst_test": None,
        "worst_psi": None,
        "threshold": None,
        "excess": None,
        "flagged": False,
        "feature_thresholds": [],
        "score_threshold": None,
        "false_positive_rate": false_positive_rate,
        "pending": True,
    }
