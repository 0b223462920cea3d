"""``pipeline.png`` from ``pipeline.json``: p99 and items/s vs offered load for the pipeline, both echoes
and both peer modes on the same axes (with the SLA line), bare onnxruntime per item vs batch size, and
each system's capacity draining a backlog (where measured)."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes

SYSTEM_STYLES: dict[str, tuple[str, str]] = {
    "pipeline": ("pipeline", "tab:blue"),
    "pipeline_traced": ("pipeline, traced", "tab:purple"),
    "echo_alo": ("echo, at-least-once (2 hops)", "tab:green"),
    "echo_eos": ("echo, exactly-once (2 hops)", "tab:olive"),
    "peer_alo": ("Quix peer, at-least-once", "tab:orange"),
    "peer_eos": ("Quix peer, exactly-once", "tab:red"),
}
"""Each system's label and colour, in the order drawn."""


SHORT_NAMES: dict[str, str] = {
    "pipeline": "pipeline",
    "pipeline_traced": "traced",
    "echo_alo": "echo ALO",
    "echo_eos": "echo EOS",
    "peer_alo": "Quix ALO",
    "peer_eos": "Quix EOS",
}
"""Each system's name where a label must be short (the capacity panel's bars)."""


def systems_in(levels: list[dict[str, Any]]) -> list[str]:
    """The systems that ran (a level holds null for one that did not)."""
    return [system for system in SYSTEM_STYLES if any(lv.get(system) for lv in levels)]


def caption(document: Mapping[str, Any]) -> str:
    """One line of context for the plot: when, what ran, and which loads were disturbed or stalled."""
    worker = document["worker_settings"]
    levels = document["levels"]
    disturbed = [
        f"{lv['offered_per_s']:g}"
        for lv in levels
        if any(lv[system]["run"]["disturbed"] for system in systems_in(levels) if lv.get(system))
    ]
    loads_of: dict[str, list[str]] = {}
    for load, systems in (document.get("ratios") or {}).get("stalled", {}).items():
        for system in systems:
            loads_of.setdefault(system, []).append(load)
    stalled = [f"{system} at {', '.join(loads)}/s" for system, loads in loads_of.items()]
    peer = document.get("peer") or {}
    eos = peer.get("exactly_once") or {}
    return (
        f"{document['timestamp']} · {document['machine']['cores']} cores · worker "
        f"{worker.get('delivery', 'at_least_once')}, max batch {worker['max_batch']} · peer "
        f"{peer.get('name', '-')}"
        + (f", exactly-once commit interval {eos['commit_interval_s']:g} s" if eos else "")
        + (f" · other processes busy during loads {', '.join(disturbed)}/s" if disturbed else "")
        + (f" · stalled: {'; '.join(stalled)}" if stalled else "")
    )


def series(levels: list[dict[str, Any]], *keys: str) -> list[float]:
    """The value under ``keys`` in each level, NaN where it (or a level on the way) is None or absent."""
    out = []
    for lv in levels:
        value: Any = lv
        for key in keys:
            value = None if value is None else value.get(key)
        out.append(np.nan if value is None else float(value))
    return out


def latency_panel(lat: Axes, levels: list[dict[str, Any]], sla_ms: float) -> None:
    """p99 vs offered load (log-log) for every system, the pipeline's p50 and one Kafka hop beside them,
    saturated loads crossed out, the SLA as a red line."""
    from matplotlib.ticker import NullLocator

    offered = [float(lv["offered_per_s"]) for lv in levels]
    shown: list[float] = [sla_ms]
    lines: list[tuple[str, tuple[str, ...], str, str, str]] = [
        (f"{label} p99", (system, "run", "latency", "p99_ms"), color, "-", "s")
        for system, (label, color) in SYSTEM_STYLES.items()
        if system in systems_in(levels)
    ]
    lines += [
        ("pipeline p50", ("pipeline", "run", "latency", "p50_ms"), "tab:blue", ":", "o"),
        ("1 Kafka hop p50", ("echo_alo", "one_hop", "p50_ms"), "tab:gray", ":", "."),
    ]
    for label, keys, color, style, marker in lines:
        values = series(levels, *keys)
        if all(np.isnan(v) for v in values):
            continue
        shown += [v for v in values if not np.isnan(v)]
        lat.plot(offered, values, marker=marker, color=color, ls=style, label=label)
    for system in systems_in(levels):
        for lv in levels:
            run = (lv.get(system) or {}).get("run")
            if run and run["saturated"] and run["latency"]["p99_ms"] is not None:
                lat.plot(lv["offered_per_s"], run["latency"]["p99_ms"], "kx", ms=9)
    lat.plot([], [], "kx", label="saturated (< 99% answered or backlog)")
    lat.axhline(sla_ms, color="red", ls="--", lw=1, label=f"{sla_ms:g} ms SLA")
    lat.set_yscale("log")
    lat.set_ylim(min(shown) / 1.5, max(shown) * 2)
    lat.set_xscale("log")
    lat.set_xticks(offered, [f"{x / 1000:g}k" if x >= 1000 else f"{x:g}" for x in offered])
    lat.xaxis.set_minor_locator(NullLocator())
    lat.set_xlabel("offered load, requests/s (log)")
    lat.set_ylabel("end-to-end latency, ms (log)")
    lat.set_title("Device round trip: pipeline vs echoes and the peer")
    lat.legend(fontsize=7, loc="best")
    lat.grid(True, which="both", alpha=0.3)


def throughput_panel(thr: Axes, levels: list[dict[str, Any]]) -> None:
    """Answered items/s vs offered load for every system, the pipeline's at the highest load written."""
    offered = [float(lv["offered_per_s"]) for lv in levels]
    thr.plot(offered, offered, color="lightgray", ls="--", label="offered")
    for system in systems_in(levels):
        label, color = SYSTEM_STYLES[system]
        thr.plot(offered, series(levels, system, "run", "items_per_s"), marker="o", color=color, label=label)
    top = levels[-1]
    items_per_s = float(top["pipeline"]["run"]["items_per_s"])
    thr.annotate(
        f"{items_per_s:.0f}/s",
        (top["offered_per_s"], items_per_s),
        textcoords="offset points",
        xytext=(4, -12),
        ha="left",
        fontsize=8,
        color="tab:blue",
    )
    thr.margins(x=0.12)
    thr.set_xlabel("offered load, requests/s")
    thr.set_ylabel("achieved, answered items/s")
    thr.set_title("Throughput")
    thr.legend(fontsize=7)
    thr.grid(True, alpha=0.3)


def onnxruntime_panel(ort: Axes, floor: Mapping[str, list[dict[str, Any]]]) -> None:
    """Bare onnxruntime µs per item (median and min) vs batch size, per model."""
    for (model, points), color in zip(floor.items(), ("tab:purple", "tab:orange"), strict=False):
        sizes = [p["batch"] for p in points]
        ort.plot(
            sizes, [p["per_item_median_us"] for p in points], marker=".", color=color, label=f"{model} median"
        )
        ort.plot(sizes, [p["per_item_min_us"] for p in points], color=color, ls=":", label=f"{model} min")
    ort.set_xscale("log", base=2)
    ort.set_yscale("log")
    ort.set_xlabel("batch size (log2)")
    ort.set_ylabel("µs per item (log)")
    ort.set_title("Bare onnxruntime, 1 intra-op thread")
    ort.legend(fontsize=8)
    ort.grid(True, which="both", alpha=0.3)


def capacity_panel(cap: Axes, capacity: Mapping[str, Any]) -> None:
    """Each system's drain of the backlog: items/s as bars, the pipeline's ratio over each written."""
    items = {s: v for s, v in capacity["items_per_s"].items() if v is not None and s in SYSTEM_STYLES}
    names = list(items)
    bars = cap.bar(
        range(len(names)),
        [items[s] for s in names],
        color=[SYSTEM_STYLES[s][1] for s in names],
    )
    pipeline_vs = capacity.get("pipeline_vs") or {}
    for bar, system in zip(bars, names, strict=True):
        value = pipeline_vs.get(system)
        text = f"{items[system]:.0f}/s" + ("" if value is None else f"\npipeline {value:.2f}x")
        cap.annotate(
            text,
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            textcoords="offset points",
            xytext=(0, 3),
            ha="center",
            fontsize=7,
        )
    cap.set_xticks(range(len(names)), [SHORT_NAMES.get(s, s) for s in names], fontsize=8)
    cap.set_ylabel("answered items/s while draining")
    cap.set_title(f"Capacity: a backlog of {capacity['backlog']:,} drained")
    cap.margins(y=0.2)
    cap.grid(True, axis="y", alpha=0.3)


def plot(document: Mapping[str, Any], path: Path) -> None:
    """The panels side by side (the capacity's where it was measured), captioned, saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels: list[dict[str, Any]] = document["levels"]
    capacity = document.get("capacity")
    fig, axes = plt.subplots(1, 4 if capacity else 3, figsize=(22 if capacity else 17, 5))
    latency_panel(axes[0], levels, float(document["settings"]["sla_ms"]))
    throughput_panel(axes[1], levels)
    onnxruntime_panel(axes[2], document["onnxruntime_floor"])
    if capacity:
        capacity_panel(axes[3], capacity)
    fig.suptitle(textwrap.fill(caption(document), 250), fontsize=9, x=0.01, ha="left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
