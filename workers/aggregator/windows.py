"""The aggregator's window state as plain JSON-ready dicts, and the pure steps that change and read it.

Three kinds of state, all kept in faust tables (``workers/aggregator/app.py``) and so in changelogs:

- a *summary window*, keyed ``<region>/<model>/<version>@<window start ms>`` (the names
  percent-encoded: `window_key`): the partial summaries of
  ``cloud.summaries`` whose ``at_ms`` falls in a tumbling window, added up (`add_summary`);
- a *join bucket*, keyed ``<partition>/<bucket>`` (`join_key`): the request ids of one partition of the
  request-id-keyed streams (labels, and samples re-keyed by request id) that hash to the bucket, with
  what arrived of each (`add_sample`, `add_label`);
- a *quality window*, keyed ``<partition>|<window key>`` (`quality_key`): per window and partition, the
  sample count, per-feature bin counts (drift) and joined / correct pairs (`add_quality`); the view adds
  the partitions up (`sum_quality`).

Each table value is small and written from one partition's events only (faust writes a table's
changelog to the partition of the event being processed): one value per partition held every pending
request id and every window's feature counts, and re-writing it on each event made the join fall
minutes behind a 150 req/s demo.

Exactly-once counting under at-least-once delivery: each value records, per source topic-partition, the
last offset it applied (`seen`), so a record redelivered after a crash is recognised and skipped.
Samples and labels are deduplicated by request id too, which covers the re-keying hop (a sample
forwarded twice arrives at two offsets). A join bucket and a quality window are two changelog records:
a crash between them is repaired on redelivery, because the bucket's entry records the offset of the
event that brought the sample (``s``) or the label (``l``) and which of them completed the join
(``j``), so the redelivered event yields the same quality update, which the quality window then
applies unless it has seen that offset.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, unquote

from edgestream.pipeline.contract.cloud import (
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
JOIN_BUCKETS: Final = 128
"""Join buckets per partition: a bucket holds 1/128 of a partition's pending request ids."""
EXPIRE_EVERY_MS: Final = 5_000
"""How often a join bucket drops its expired request ids (each event re-writes the bucket, so it is
kept small; scanning it on every event would cost more than the write)."""


def window_start(at_ms: int, window_ms: int) -> int:
    """Start of the tumbling window ``at_ms`` falls in."""
    return at_ms - at_ms % window_ms


def window_key(region: str, model: str, version: int, start_ms: int) -> str:
    """``<region>/<model>/<version>@<start ms>``: one window of one (region, model, version). The
    names are the records' own, whatever they hold, so each is percent-encoded (every character but
    letters, digits and ``-._~``): a model named ``team/scorer`` made a key that did not parse back,
    and the view and the summaries' expiry raised on it. Names of those characters only, every name
    the zoo, the registry and the region rules make, are written as they are."""
    return f"{quote(region, safe='')}/{quote(model, safe='')}/{version}@{start_ms}"


def parse_window_key(key: str) -> tuple[str, str, int, int]:
    """(region, model, version, start ms) of a window key (`window_key`); raises ValueError for a
    string that is none. A key written before the names were encoded, whose model held a ``/``, is
    read with everything between the region and the version as the model: such a key restored from a
    changelog made every restart of the aggregator crash again."""
    series, _, start = key.rpartition("@")
    region, *model, version = series.split("/")
    if not model:
        raise ValueError(f"not a window key: {key!r}")
    return unquote(region), unquote("/".join(model)), int(version), int(start)


def window_start_of(key: str) -> int | None:
    """The start of a window key's window, None for a string that is no window key."""
    try:
        return parse_window_key(key)[3]
    except ValueError:
        return None


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


MAX_WINDOW_LABELS: Final = 1_000
"""Distinct labels a window counts apart; the counts of any further ones go to `OTHER_LABELS`. A window
is one table value, written whole to faust's changelog (at most a Kafka record): a model whose labels
are not a few class indices (its graph's own label output, thousands of classes) made a window of 43,000
answers over 1 MB, which stopped the aggregator (found by the hostile-input audit, 2026-12-07)."""
OTHER_LABELS: Final = "other"
"""The window's count of the labels past `MAX_WINDOW_LABELS`."""


def add_summary(state: State, summary: PartialSummary) -> None:
    """Add one partial summary into its window (the caller has checked `seen`)."""
    state["summaries"] += 1
    state["results"] += summary.results
    for reason, n in summary.dead_letters.items():
        state["dead_letters"][reason] = state["dead_letters"].get(reason, 0) + n
    labels = state["labels"]
    for label, n in summary.labels.items():
        key = str(label)
        if key not in labels and len(labels) >= MAX_WINDOW_LABELS:
            key = OTHER_LABELS
        labels[key] = labels.get(key, 0) + n
    state["latency"] = [a + b for a, b in zip(state["latency"], summary.latency_buckets, strict=True)]
    state["scores"] = [a + b for a, b in zip(state["scores"], summary.score_bins, strict=True)]


# -- the join of samples and labels --------------------------------------------------------------------


def join_key(partition: int, request_id: bytes) -> str:
    """``<partition>/<bucket>``: the join bucket of a request id in a partition."""
    bucket = int.from_bytes(hashlib.blake2b(request_id, digest_size=4).digest(), "big") % JOIN_BUCKETS
    return f"{partition}/{bucket}"


def quality_key(partition: int, window: str) -> str:
    """``<partition>|<window key>``: one window's quality counters from one partition."""
    return f"{partition}|{window}"


def parse_quality_key(key: str) -> tuple[int, str]:
    """(partition, window key) of a quality key."""
    partition, _, window = key.partition("|")
    return int(partition), window


def new_join() -> State:
    """An empty join bucket."""
    return {"pending": {}, "offsets": {}}


def new_quality() -> State:
    """Empty quality counters of one window (from one partition)."""
    return {"samples": 0, "joined": 0, "correct": 0, "features": None, "offsets": {}}


@dataclass(frozen=True, slots=True)
class QualityUpdate:
    """What one sample or label event adds to its window's quality counters."""

    window: str
    """The sample's window key."""
    sample: bool
    """Count a sample (and its feature bins)."""
    joined: bool
    """Count a joined pair."""
    correct: bool
    """The pair's answer matched its label."""
    bins: tuple[int, ...] | None = None
    """The sample's feature bins (drift), if it is counted and has features."""


def _entry(state: State, rid: str, fresh: bool) -> State | None:
    pending: dict[str, State] = state["pending"]
    return pending.setdefault(rid, {}) if fresh else pending.get(rid)


def add_sample(
    state: State,
    sample: Sample,
    offset: int,
    window_ms: int,
    *,
    fresh: bool = True,
    bins: Sequence[int] | None = None,
) -> QualityUpdate | None:
    """Record the sample that arrived at ``offset`` in its join bucket (``fresh``: the bucket has not
    seen that offset) and join it with its label if that came first. Returns the quality update the
    event implies, fresh or redelivered; None for a duplicate request id."""
    rid = sample.request_id.hex()
    entry = _entry(state, rid, fresh)
    if entry is None:
        return None
    if fresh:
        if "w" in entry:
            return None
        start = window_start(sample.at_ms, window_ms)
        entry["w"] = window_key(sample.region, sample.model, sample.model_version, start)
        entry["end"] = start + window_ms
        entry["pred"] = sample.label
        entry["s"] = offset
        if "label" in entry:
            entry["j"] = "s"
    elif entry.get("s") != offset:
        return None
    joined = entry.get("j") == "s"
    return QualityUpdate(
        entry["w"],
        sample=True,
        joined=joined,
        correct=joined and entry["pred"] == entry["label"],
        bins=None if bins is None else tuple(bins),
    )


def add_label(state: State, label: Label, offset: int, *, fresh: bool = True) -> QualityUpdate | None:
    """Record the label that arrived at ``offset`` (see `add_sample`) and join it with its sample if that
    came first; the quality update when this label completed a join, else None."""
    rid = label.request_id.hex()
    entry = _entry(state, rid, fresh)
    if entry is None:
        return None
    if fresh:
        if "label" in entry:
            return None
        entry["label"] = label.label
        entry["l"] = offset
        if "w" in entry:
            entry["j"] = "l"
    elif entry.get("l") != offset:
        return None
    if entry.get("j") != "l":
        return None
    return QualityUpdate(entry["w"], sample=False, joined=True, correct=entry["pred"] == entry["label"])


def add_quality(state: State, update: QualityUpdate, n_bins: Sequence[int]) -> None:
    """Apply ``update`` to a window's quality counters (the caller has checked `seen`)."""
    if update.sample:
        state["samples"] += 1
        if update.bins is not None:
            counts = state.get("features") or [[0] * n for n in n_bins]
            for j, b in enumerate(update.bins):
                counts[j][b] += 1
            state["features"] = counts
    if update.joined:
        state["joined"] += 1
        state["correct"] += int(update.correct)


def expire_join(state: State, now_ms: int, wait_ms: int) -> int:
    """Drop the request ids (joined or not) whose sample's window ended more than ``wait_ms`` before
    ``now_ms``: a label that comes later than that is not joined. Labels whose sample never came are
    bounded by `bound_pending`. Runs at most every ``EXPIRE_EVERY_MS`` per bucket; returns how many
    went."""
    if now_ms < state.get("expire_at", 0):
        return 0
    state["expire_at"] = now_ms + EXPIRE_EVERY_MS
    pending: dict[str, State] = state["pending"]
    before_ms = now_ms - wait_ms
    doomed = [rid for rid, e in pending.items() if e.get("end", before_ms) < before_ms]
    for rid in doomed:
        del pending[rid]
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


def sum_quality(items: Iterable[tuple[str, State]]) -> dict[str, State]:
    """The quality counters of every window, added up over the partitions."""
    out: dict[str, State] = {}
    for key, window in items:
        _, window_key_ = parse_quality_key(key)
        total = out.setdefault(window_key_, {"samples": 0, "joined": 0, "correct": 0, "features": None})
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
