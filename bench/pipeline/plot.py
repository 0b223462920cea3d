"""``pipeline.png`` from ``pipeline.json``: latency and throughput vs offered load beside the echo floor,
and bare onnxruntime per item vs batch size."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes

LATENCY_LINES: tuple[tuple[str, tuple[str, ...], str, str, str], ...] = (
    ("pipeline p50", ("pipeline", "run", "latency", "p50_ms"), "tab:blue", "-", "o"),
    ("pipeline p99", ("pipeline", "run", "latency", "p99_ms"), "tab:blue", "--", "s"),
    ("echo floor (2 hops) p50", ("echo", "run", "latency", "p50_ms"), "tab:green", "-", "o"),
    ("echo floor (2 hops) p99", ("echo", "run", "latency", "p99_ms"), "tab:green", "--", "s"),
    ("1 Kafka hop p50", ("echo", "one_hop", "p50_ms"), "tab:gray", ":", "."),
)
"""The latency panel's lines: label, keys into a level, colour, line style, marker."""


def caption(document: Mapping[str, Any]) -> str:
    """One line of context for the plot: when, what ran, and which loads were disturbed."""
    worker = document["worker_settings"]
    disturbed = [
        f"{lv['offered_per_s']:g}"
        for lv in document["levels"]
        if lv["pipeline"]["run"]["disturbed"] or lv["echo"]["run"]["disturbed"]
    ]
    return (
        f"{document['timestamp']} · {document['machine']['cores']} cores · worker "
        f"{worker.get('delivery', 'at_least_once')}, max batch {worker['max_batch']} · echo "
        f"{'in transactions' if document['echo_transactional'] else 'acked, then committed'}"
        + (f" · other processes busy during loads {', '.join(disturbed)}/s" if disturbed else "")
    )


def series(levels: list[dict[str, Any]], *keys: str) -> list[float]:
    """The value under ``keys`` in each level, NaN where it is None."""
    out = []
    for lv in levels:
        value: Any = lv
        for key in keys:
            value = value[key]
        out.append(np.nan if value is None else float(value))
    return out


def latency_panel(lat: Axes, levels: list[dict[str, Any]], sla_ms: float) -> None:
    """End-to-end latency vs offered load (log-log), saturated loads marked, the SLA as a red line."""
    from matplotlib.ticker import NullLocator

    offered = [float(lv["offered_per_s"]) for lv in levels]
    shown: list[float] = [sla_ms]
    for label, keys, color, style, marker in LATENCY_LINES:
        values = series(levels, *keys)
        shown += [v for v in values if not np.isnan(v)]
        lat.plot(offered, values, marker=marker, color=color, ls=style, label=label)
    for lv in levels:
        for target, color in (("pipeline", "tab:blue"), ("echo", "tab:green")):
            run = lv[target]["run"]
            if run["saturated"] and run["latency"]["p99_ms"] is not None:
                lat.annotate(
                    f"saturated\n{run['answered_share']:.0%} answered",
                    (lv["offered_per_s"], run["latency"]["p99_ms"]),
                    textcoords="offset points",
                    xytext=(0, 8),
                    ha="center",
                    fontsize=7,
                    color=color,
                )
    lat.axhline(sla_ms, color="red", ls="--", lw=1, label=f"{sla_ms:g} ms SLA")
    lat.set_yscale("log")
    lat.set_ylim(min(shown) / 1.5, max(shown) * 3)  # room above for the saturation notes
    lat.set_xscale("log")
    lat.set_xticks(offered, [f"{x:g}" for x in offered])
    lat.xaxis.set_minor_locator(NullLocator())
    lat.set_xlabel("offered load, requests/s (log)")
    lat.set_ylabel("end-to-end latency, ms (log)")
    lat.set_title("Latency: pipeline vs Kafka-only echo")
    lat.legend(fontsize=8, loc="upper left")
    lat.grid(True, which="both", alpha=0.3)


def throughput_panel(thr: Axes, levels: list[dict[str, Any]]) -> None:
    """Answered and sent items/s vs offered load, the highest load's throughput written beside it."""
    offered = [float(lv["offered_per_s"]) for lv in levels]
    thr.plot(offered, offered, color="lightgray", ls="--", label="offered")
    for target, color, label in (("pipeline", "tab:blue", "pipeline"), ("echo", "tab:green", "echo floor")):
        thr.plot(offered, series(levels, target, "run", "items_per_s"), marker="o", color=color, label=label)
        thr.plot(
            offered,
            series(levels, target, "run", "sent_per_s"),
            color=color,
            ls=":",
            lw=1,
            label=f"sent ({target} run)",
        )
    top = levels[-1]
    for target, color, dy in (("pipeline", "tab:blue", -16), ("echo", "tab:green", 6)):
        items_per_s = float(top[target]["run"]["items_per_s"])
        thr.annotate(
            f"{items_per_s:.0f}/s",
            (top["offered_per_s"], items_per_s),
            textcoords="offset points",
            xytext=(4, dy),
            ha="left",
            fontsize=8,
            color=color,
        )
    thr.margins(x=0.12)
    thr.set_xlabel("offered load, requests/s")
    thr.set_ylabel("achieved, answered items/s")
    thr.set_title("Throughput")
    thr.legend(fontsize=8)
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


def plot(document: Mapping[str, Any], path: Path) -> None:
    """The three panels side by side, captioned, saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels: list[dict[str, Any]] = document["levels"]
    fig, (lat, thr, ort) = plt.subplots(1, 3, figsize=(17, 5))
    latency_panel(lat, levels, float(document["settings"]["sla_ms"]))
    throughput_panel(thr, levels)
    onnxruntime_panel(ort, document["onnxruntime_floor"])
    fig.suptitle(caption(document), fontsize=9, x=0.01, ha="left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
