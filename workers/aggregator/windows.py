"""The aggregator's window state as plain JSON-ready dicts, and the pure steps that change and read it.

Two kinds of state, both kept in faust tables (``workers/aggregator/app.py``) and so in changelogs:

- a *summary window*, keyed ``<region>/<model>/<version>@<window start ms>``: the partial summaries of
  ``cloud.summaries`` whose ``at_ms`` falls in a tumbling window, added up (`add_summary`);
- a *join partition*, keyed by the partition of the request-id-keyed streams (labels, and samples
  re-keyed by request id): the samples and labels not yet joined, and per window the sample count,
  per-feature bin counts (drift) and joined / correct pairs (`add_sample`, `add_label`).

Exactly-once counting under at-least-once delivery: each state records, per source topic-partition, the
last offset it applied, in the same table value (one changelog record), so a record redelivered after
a crash is recognised and skipped (`seen`). Samples and labels are deduplicated by request id too,
which covers the re-keying hop (a sample forwarded twice arrives at two offsets).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from edgestream.pipeline.cloud import (
    LATENCY_BOUNDS_MS,
    SCORE_BINS,
    Label,
    PartialSummary,
    Sample,
)

State = dict[str, Any]
"""A table value: JSON-ready (string keys, lists, numbers)."""

PERCENTILES: Final = (50, 95, 99)
"""Latency percentiles a window reports (upper bounds of histogram buckets)."""


def window_start(at_ms: int, window_ms: int) -> int:
    """Start of the tumbling window ``at_ms`` falls in."""
    return at_ms - at_ms % window_ms


def window_key(region: str, model: str, version: int, start_ms: int) -> str:
    """``<region>/<model>/<version>@<start ms>``: one window of one (region, model, version)."""
    return f"{region}/{model}/{version}@{start_ms}"


def parse_window_key(key: str) -> tuple[str, str, int, int]:
    """(region, model, version, start ms) of a window key."""
    series, _, start = key.rpartition("@")
    region, model, version = series.split("/")
    return region, model, int(version), int(start)


def seen(state: State, topic: str, partition: int, offset: int) -> bool:
    """Whether the record at (topic, partition, offset) is already in ``state``; records it if not."""
    offsets: dict[str, int] = state.setdefault("offsets", {})
    source = f"{topic}:{partition}"
    if offset <= offsets.get(source, -1):
        return True
    offsets[source] = offset
    return False


def new_window(region: str, model: str, version: int, start_ms: int, window_ms: int) -> State:
    """An empty summary window."""
    return {
        "region": region,
        "model": model,
        "version": version,
        "start_ms": start_ms,
        "end_ms": start_ms + window_ms,
        "summaries": 0,
        "results": 0,
        "dead_letters": {},
        "latency": [0] * (len(LATENCY_BOUNDS_MS) + 1),
        "labels": {},
        "scores": [0] * SCORE_BINS,
        "offsets": {},
    }


def add_summary(state: State, summary: PartialSummary) -> None:
    """Add one partial summary into its window (the caller has checked `seen`)."""
    state["summaries"] += 1
    state["results"] += summary.results
    for reason, n in summary.dead_letters.items():
        state["dead_letters"][reason] = state["dead_letters"].get(reason, 0) + n
    for label, n in summary.labels.items():
        state["labels"][str(label)] = state["labels"].get(str(label), 0) + n
    state["latency"] = [a + b for a, b in zip(state["latency"], summary.latency_buckets, strict=True)]
    state["scores"] = [a + b for a, b in zip(state["scores"], summary.score_bins, strict=True)]


# -- the join of samples and labels --------------------------------------------------------------------


def new_join() -> State:
    """An empty join partition."""
    return {"pending": {}, "windows": {}, "offsets": {}}


def _join_window(state: State, key: str) -> State:
    window: State = state["windows"].setdefault(
        key, {"samples": 0, "joined": 0, "correct": 0, "features": None}
    )
    return window


def add_sample(
    state: State, sample: Sample, window_ms: int, feature_bins: Sequence[int] | None, n_bins: Sequence[int]
) -> bool:
    """Count a sample into its window (feature bins for drift) and join it with its label if that came
    first; False for a duplicate request id."""
    rid = sample.request_id.hex()
    entry: State = state["pending"].setdefault(rid, {})
    if "w" in entry:
        return False
    key = window_key(sample.region, sample.model, sample.model_version, window_start(sample.at_ms, window_ms))
    entry["w"] = key
    entry["pred"] = sample.label
    window = _join_window(state, key)
    window["samples"] += 1
    if feature_bins is not None:
        counts = window.get("features") or [[0] * n for n in n_bins]
        for j, b in enumerate(feature_bins):
            counts[j][b] += 1
        window["features"] = counts
    _maybe_join(state, rid, entry)
    return True


def add_label(state: State, label: Label) -> bool:
    """Record a label and join it with its sample if that came first; False for a duplicate."""
    rid = label.request_id.hex()
    entry: State = state["pending"].setdefault(rid, {})
    if "label" in entry:
        return False
    entry["label"] = label.label
    _maybe_join(state, rid, entry)
    return True


def _maybe_join(state: State, rid: str, entry: State) -> None:
    if "w" in entry and "label" in entry and not entry.get("joined"):
        window = _join_window(state, entry["w"])
        window["joined"] += 1
        window["correct"] += int(entry["pred"] == entry["label"])
        entry["joined"] = True


def expire_join(state: State, before_ms: int, window_ms: int) -> int:
    """Drop the windows that ended before ``before_ms`` and the request ids of theirs (joined or not):
    samples without labels expire with their window. Labels whose sample never came are bounded by
    `bound_pending`. Returns how many windows were dropped."""
    doomed = {k for k in state["windows"] if parse_window_key(k)[3] + window_ms < before_ms}
    for key in doomed:
        del state["windows"][key]
    if doomed:
        state["pending"] = {rid: e for rid, e in state["pending"].items() if e.get("w") not in doomed}
    return len(doomed)


def bound_pending(state: State, max_pending: int) -> int:
    """Keep at most ``max_pending`` request ids (the oldest go first); returns how many went."""
    pending: dict[str, State] = state["pending"]
    excess = len(pending) - max_pending
    if excess <= 0:
        return 0
    for rid in list(pending)[:excess]:
        del pending[rid]
    return excess


def sum_join_windows(states: Sequence[Mapping[str, Any]]) -> dict[str, State]:
    """The join counters of every window, added up over the join partitions."""
    out: dict[str, State] = {}
    for state in states:
        for key, window in state.get("windows", {}).items():
            total = out.setdefault(key, {"samples": 0, "joined": 0, "correct": 0, "features": None})
            for name in ("samples", "joined", "correct"):
                total[name] += window[name]
            features = window.get("features")
            if features is not None:
                if total["features"] is None:
                    total["features"] = [list(f) for f in features]
                else:
                    total["features"] = [
                        [a + b for a, b in zip(x, y, strict=True)]
                        for x, y in zip(total["features"], features, strict=True)
                    ]
    return out
