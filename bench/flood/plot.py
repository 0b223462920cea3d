"""``flood.png`` from ``flood.json``: per phase, each region's p99 device round trip and its share
answered within the SLA, and what the broker acknowledged to the flooder."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes

REGION_COLORS = ("tab:red", "tab:blue")
"""The flooded region's colour, then the other's."""


def values(phases: Sequence[Mapping[str, Any]], region: str, key: str) -> list[float]:
    """``key`` of ``region`` in each phase, NaN where None."""
    out = []
    for phase in phases:
        v = phase["regions"][region].get(key)
        out.append(np.nan if v is None else float(v))
    return out


def phase_label(phase: Mapping[str, Any]) -> str:
    """The phase's kind, with its quota's byte rate (and its factor of the honest rate) where it had one."""
    kind = str(phase.get("kind") or phase["phase"]).replace("_", " + ")
    quota = phase.get("quota") or {}
    rate = quota.get("producer_byte_rate")
    if rate is None:
        return kind
    factor = phase.get("quota_factor")
    return f"{kind}\n{rate / 1000:,.0f} kB/s" + ("" if factor is None else f" ({factor:g}x)")


def _bars(
    ax: Axes, phases: Sequence[Mapping[str, Any]], regions: Sequence[str], key: str, scale: float
) -> None:
    width = 0.38
    x = np.arange(len(phases))
    for i, region in enumerate(regions):
        ys = [v * scale for v in values(phases, region, key)]
        bars = ax.bar(x + (i - 0.5) * width, ys, width, color=REGION_COLORS[i % 2], label=region)
        for bar, y in zip(bars, ys, strict=True):
            if np.isnan(y):  # no answer at all to take a p99 of
                ax.annotate(
                    "none\nanswered",
                    (bar.get_x() + bar.get_width() / 2, 0.02),
                    xycoords=ax.get_xaxis_transform(),
                    ha="center",
                    fontsize=7,
                    color=REGION_COLORS[i % 2],
                )
            else:
                ax.annotate(
                    f"{y:,.0f}" if y >= 10 else f"{y:.1f}",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    textcoords="offset points",
                    xytext=(0, 2),
                    ha="center",
                    fontsize=7,
                )
    ax.set_xticks(x, [phase_label(p) for p in phases], fontsize=8)


def latency_panel(ax: Axes, document: Mapping[str, Any], regions: Sequence[str]) -> None:
    phases = document["phases"]
    s = document["settings"]
    _bars(ax, phases, regions, "p99_ms", 1.0)
    ax.axhline(s["sla_ms"], color="black", ls="--", lw=1, label=f"{s['sla_ms']:g} ms SLA")
    ax.axhline(
        s["device_deadline_ms"], color="gray", ls=":", lw=1, label=f"{s['device_deadline_ms']:g} ms deadline"
    )
    ax.set_yscale("log")
    ax.set_ylabel("p99 device round trip of the answered, ms (log)")
    ax.set_title("Honest devices' p99")
    ax.legend(fontsize=7)
    ax.grid(True, axis="y", which="both", alpha=0.3)


def share_panel(ax: Axes, document: Mapping[str, Any], regions: Sequence[str]) -> None:
    s = document["settings"]
    _bars(ax, document["phases"], regions, "within_sla_share", 100.0)
    ax.set_ylim(0, 112)
    ax.set_ylabel(f"% of requests answered within {s['sla_ms']:g} ms")
    ax.set_title(f"Honest devices within {s['sla_ms']:g} ms ({s['rate_per_s']:g} req/s per region)")
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(True, axis="y", alpha=0.3)


def flood_panel(ax: Axes, document: Mapping[str, Any]) -> None:
    phases = document["phases"]
    x = np.arange(len(phases))
    rates = [float(p["flooder"]["acked_per_s"]) if p.get("flooder") else np.nan for p in phases]
    bars = ax.bar(x, [max(r, 1.0) if not np.isnan(r) else 0.0 for r in rates], 0.5, color="tab:gray")
    for bar, phase, rate in zip(bars, phases, rates, strict=True):
        flood = phase.get("flooder")
        broker = phase["cpu_cores"].get("broker", 0.0)
        text = (
            f"no flood\nbroker {broker:.2f} cores"
            if not flood
            else f"{rate:,.0f} rec/s\n{flood['acked_bytes_per_s'] / 1e6:.2f} MB/s\nbroker {broker:.2f} cores"
        )
        ax.annotate(
            text,
            (bar.get_x() + bar.get_width() / 2, max(bar.get_height(), 1.0)),
            textcoords="offset points",
            xytext=(0, 2),
            ha="center",
            fontsize=7,
        )
    ax.set_xticks(x, [phase_label(p) for p in phases], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylim(1, max([r for r in rates if not np.isnan(r)] or [1.0]) * 20)
    ax.set_ylabel("records/s the broker acknowledged (log)")
    ax.set_title("The flooder (one device of region A), and the broker's CPU")
    ax.grid(True, axis="y", which="both", alpha=0.3)


def recovery_panel(ax: Axes, document: Mapping[str, Any], regions: Sequence[str]) -> None:
    """Per recovery phase, each region's share answered within the deadline, second by second after
    the flood stopped."""
    styles = {regions[0]: "-", regions[1]: ":"}
    phases = [p for p in document["phases"] if p.get("kind") == "recovery"]
    colours = plt_colours(len(phases))
    for phase, colour in zip(phases, colours, strict=True):
        for region in regions:
            rec = phase["regions"][region].get("recovery")
            if not rec:
                continue
            points = [
                (b["t_s"], 100 * b["within_deadline_share"])
                for b in rec["bins"]
                if b["within_deadline_share"] is not None
            ]
            after = rec["recovered_after_s"]
            label = f"{phase_label(phase).replace(chr(10), ' ')} · {region}: " + (
                "never" if after is None else f"from {after:g} s"
            )
            ax.plot([t for t, _ in points], [v for _, v in points], styles[region], color=colour, label=label)
    ax.set_xlabel("seconds after the flood stopped (by capture time)")
    ax.set_ylabel("% answered within the device deadline")
    ax.set_ylim(-2, 102)
    ax.set_title("Recovery after a short flood (solid: flooded region, dotted: the other)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")


def plt_colours(n: int) -> list[str]:
    """``n`` distinct colours of matplotlib's default cycle."""
    cycle = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    return [cycle[i % len(cycle)] for i in range(n)]


def caption(document: Mapping[str, Any]) -> str:
    m = document["machine"]
    honest = document.get("honest_produce") or {}
    rate = honest.get("bytes_per_s")
    return (
        f"{document['timestamp']} · {m['cores']} cores · {document['settings']['duration_s']:g} s measured "
        f"per phase · flooded region {document['regions']['flooded']}, other {document['regions']['other']}"
        + (f" · a region's honest fleet produced {rate / 1000:,.1f} kB/s" if rate else "")
        + f" · p99 over the answered; a device falls back after {document['settings']['wait_ms']:g} ms"
        + f" · wall {document['wall_s']:.0f} s"
    )


def plot(document: Mapping[str, Any], path: Path) -> None:
    """The three panels side by side, captioned, saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regions = [document["regions"]["flooded"], document["regions"]["other"]]
    recovering = any(p.get("kind") == "recovery" for p in document["phases"])
    if recovering:
        fig, grid = plt.subplots(2, 2, figsize=(17, 10))
        axes = list(grid.flat)
    else:
        fig, row = plt.subplots(1, 3, figsize=(17, 5))
        axes = list(row)
    latency_panel(axes[0], document, regions)
    share_panel(axes[1], document, regions)
    flood_panel(axes[2], document)
    if recovering:
        recovery_panel(axes[3], document, regions)
    fig.suptitle(textwrap.fill(caption(document), 250), fontsize=9, x=0.01, ha="left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
