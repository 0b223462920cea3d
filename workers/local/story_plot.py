"""The story's plot: which version answered, how accurate each was, and the drift the cloud saw, over
one time axis (seconds since the fleet started) with the story's events marked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgestream.pipeline.learning.drift import MIN_SAMPLES
from edgestream.workers.local.fleetreport import Answer, FleetReport
from edgestream.workers.local.story import StoryReport

SHARE_BIN_S = 2.0
"""Width of the bins of the traffic-share panel."""
ACCURACY_BIN_S = 5.0
"""Width of the bins of the accuracy panel."""
MIN_BIN_ANSWERS = 10
"""Fewest answers of a version in a bin for its accuracy to be drawn."""
_MARKED = ("shift", "drift", "canary", "promote", "rollback", "applied")
_COLOURS = {"reference": "tab:blue", "retrained": "tab:green", "bad": "tab:red", "other": "tab:gray"}


def _binned(width_s: float, end_s: float) -> tuple[np.ndarray[Any, Any], int]:
    edges = np.arange(0.0, end_s + width_s, width_s)
    return edges, len(edges) - 1


def plot_story(
    report: FleetReport,
    story: StoryReport,
    windows: Sequence[dict[str, Any]],
    window_s: float,
    path: Path,
) -> Path:
    """Three panels: share of answers per version, accuracy per version (device truth), max PSI per
    region window (filled where judged: ``MIN_SAMPLES`` or more); writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    answers = [a for a in report.totals().answers if a.model == story.model]
    end_s = max([a.capture_s for a in answers] + [e.t_s for e in story.events] + [1.0])
    fig, (share, accuracy, drift) = plt.subplots(3, 1, figsize=(12, 10), sharex=True)
    _share_panel(share, story, answers, end_s)
    _accuracy_panel(accuracy, story, answers, end_s)
    _drift_panel(drift, story, windows, window_s, report.started_at)
    _mark_events((share, accuracy, drift), story)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _share_panel(ax: Any, story: StoryReport, answers: Sequence[Answer], end_s: float) -> None:
    """Which version answered: each version's share of the answers, by capture time."""
    versions = sorted({a.version for a in answers})
    edges, n_bins = _binned(SHARE_BIN_S, end_s)
    centres = (edges[:-1] + edges[1:]) / 2
    counts = {v: np.zeros(n_bins) for v in versions}
    for a in answers:
        counts[a.version][min(int(a.capture_s // SHARE_BIN_S), n_bins - 1)] += 1
    totals = np.maximum(sum(counts.values(), np.zeros(n_bins)), 1)
    bottom = np.zeros(n_bins)
    for v in versions:
        part = counts[v] / totals
        role = story.role(v)
        ax.bar(centres, part, width=SHARE_BIN_S, bottom=bottom, color=_COLOURS[role], label=f"v{v} ({role})")
        bottom += part
    ax.set_ylabel("share of answers")
    ax.set_ylim(0, 1)
    ax.set_title(f"{story.model}: which version answered (by capture time, {SHARE_BIN_S:g} s bins)")
    if versions:
        ax.legend(loc="lower left", fontsize=8)


def _accuracy_panel(ax: Any, story: StoryReport, answers: Sequence[Answer], end_s: float) -> None:
    """Accuracy per version, as the devices saw it (bins of enough answers only)."""
    versions = sorted({a.version for a in answers})
    edges, n_bins = _binned(ACCURACY_BIN_S, end_s)
    centres = (edges[:-1] + edges[1:]) / 2
    for v in versions:
        n = np.zeros(n_bins)
        right = np.zeros(n_bins)
        for a in answers:
            if a.version == v:
                b = min(int(a.capture_s // ACCURACY_BIN_S), n_bins - 1)
                n[b] += 1
                right[b] += a.correct
        ok = n >= MIN_BIN_ANSWERS
        role = story.role(v)
        ax.plot(centres[ok], right[ok] / n[ok], "o-", color=_COLOURS[role], label=f"v{v} ({role})")
    ax.set_ylabel("accuracy (device's truth)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"accuracy per version ({ACCURACY_BIN_S:g} s bins of at least {MIN_BIN_ANSWERS} answers)")
    if versions:
        ax.legend(loc="lower left", fontsize=8)


def _drift_panel(
    ax: Any, story: StoryReport, windows: Sequence[dict[str, Any]], window_s: float, started: float
) -> None:
    """Drift, as the aggregator judged it: each version's windows against its own reference, as the
    worst test's PSI over its calibrated threshold (past 1: flagged)."""
    rate = None
    drifted = sorted({int(w["version"]) for w in windows if w["model"] == story.model})
    for v in drifted:
        xs, ys, judged = [], [], []
        for w in windows:
            d = w.get("drift") or {}
            if w["model"] != story.model or int(w["version"]) != v or d.get("excess") is None:
                continue
            rate = d.get("false_positive_rate", rate)
            xs.append(w["start_ms"] / 1000 - started + window_s / 2)
            ys.append(max(float(d["excess"]), 1e-3))
            judged.append(int(d.get("samples", 0)) >= MIN_SAMPLES)
        role = story.role(v)
        colour = _COLOURS[role]
        against = "the zoo's training data" if role == "reference" else "its own training samples"
        x, y, j = np.asarray(xs), np.asarray(ys), np.asarray(judged, dtype=bool)
        if len(x):
            ax.scatter(x[j], y[j], color=colour, label=f"v{v} ({role}) vs {against}")
            ax.scatter(x[~j], y[~j], facecolors="none", edgecolors=colour, alpha=0.6)
    if rate is not None:
        ax.axhline(
            1.0, color="red", ls="--", lw=1, label=f"calibrated threshold ({float(rate):.0%} false alarms)"
        )
    ax.set_yscale("log")
    ax.set_ylabel("PSI / calibrated threshold (worst test)")
    ax.set_xlabel("seconds since the fleet started")
    ax.set_title(
        f"drift per region window ({window_s:g} s; filled: judged, {MIN_SAMPLES}+ samples; hollow: fewer)"
    )
    if drifted:
        ax.legend(loc="upper left", fontsize=7)


def _mark_events(axes: Sequence[Any], story: StoryReport) -> None:
    """A dotted line at each marked event on every panel, and its label above the first."""
    marked = [event for event in story.events if event.kind in _MARKED]
    for ax in axes:
        for event in marked:
            ax.axvline(event.t_s, color="black", lw=0.8, ls=":")
    for event in marked:
        label = event.kind if event.version is None else f"{event.kind} v{event.version}"
        axes[0].annotate(
            label,
            (event.t_s, 1.0),
            xytext=(2, 2),
            textcoords="offset points",
            rotation=60,
            fontsize=7,
            va="bottom",
        )
