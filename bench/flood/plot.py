"""``flood.png`` from ``flood.json``: per phase, each region's p99 device round trip and its share
answered within the SLA, what the broker acknowledged to the flooder, and the recovery curves; and
``flood-recovery.png``: the recovery phases second by second (share within the deadline, p99, the
throttles the broker told the honest devices' producers)."""

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


def _recovery_phases(document: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [p for p in document["phases"] if p.get("kind") == "recovery" and p.get("recovery")]


def _flood_span(ax: Axes, phases: Sequence[Mapping[str, Any]]) -> None:
    """The flood (the longest of the phases'), shaded: it ends at 0."""
    if phases:
        flood_s = max(float(p["recovery"]["flood_s"]) for p in phases)
        ax.axvspan(-flood_s, 0.0, color="0.85", zorder=0, label=f"the flood ({flood_s:.1f} s)")
        ax.axvline(0.0, color="0.4", lw=0.8)


def _curve(
    ax: Axes,
    document: Mapping[str, Any],
    regions: Sequence[str],
    key: str,
    scale: float,
    *,
    label_recovered: bool = False,
    only_positive: bool = False,
) -> None:
    """Per recovery phase (a colour) and region (solid: flooded, dotted: the other), ``key`` of each
    second's bin, against seconds after the flood's end; a bin where it is None (or, with
    ``only_positive``, not above 0: drawn as points, not lines) is left out."""
    styles = {regions[0]: "-", regions[1]: ":"}
    phases = _recovery_phases(document)
    for phase, colour in zip(phases, plt_colours(len(phases)), strict=True):
        for region in regions:
            rec = phase["regions"][region].get("recovery")
            if not rec:
                continue
            points = [
                (b["t_s"] + 0.5, scale * b[key])
                for b in rec["bins"]
                if b.get(key) is not None and (b[key] > 0 or not only_positive)
            ]
            label = f"{phase_label(phase).replace(chr(10), ' ')} · {region}"
            if label_recovered:
                after = rec["recovered_after_s"]
                label += ": " + ("never recovered" if after is None else f"recovered from {after:g} s")
            xs, ys = [t for t, _ in points], [v for _, v in points]
            if only_positive:
                ax.plot(xs, ys, "o" if region == regions[0] else "x", color=colour, ms=5, label=label)
            else:
                ax.plot(xs, ys, styles[region], color=colour, marker=".", ms=3, label=label)
    _flood_span(ax, phases)
    ax.set_xlabel("seconds after the flood's end (by capture time of the honest request)")
    ax.grid(True, alpha=0.3)


def recovery_panel(ax: Axes, document: Mapping[str, Any], regions: Sequence[str]) -> None:
    """Per recovery phase, each region's share answered within the deadline, second by second, from
    before the flood to the window's end."""
    s = document["settings"]
    _curve(ax, document, regions, "within_deadline_share", 100.0, label_recovered=True)
    ax.axhline(100 * s["recovered_share"], color="black", ls="--", lw=0.8)
    ax.set_ylabel(f"% answered within the {s['device_deadline_ms']:g} ms deadline")
    ax.set_ylim(-2, 102)
    ax.set_title("Recovery after a short flood (solid: flooded region, dotted: the other)")
    ax.legend(fontsize=7, loc="lower right")


def p99_panel(ax: Axes, document: Mapping[str, Any], regions: Sequence[str]) -> None:
    s = document["settings"]
    _curve(ax, document, regions, "p99_ms", 1.0)
    ax.axhline(s["device_deadline_ms"], color="gray", ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_ylabel("p99 of the answered, ms (log)")
    ax.set_title("Honest devices' p99 per second (no point: none answered)")


def throttle_panel(ax: Axes, document: Mapping[str, Any], regions: Sequence[str]) -> None:
    _curve(ax, document, regions, "throttle_max_ms", 1.0, only_positive=True)
    ax.set_yscale("log")
    ax.set_ylabel("longest throttle told, ms (log)")
    ax.set_title(
        "Throttle the broker told the honest devices' producer, per second by when served "
        "(o: flooded region, x: the other; no point: none)"
    )
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper right")


def plt_colours(n: int) -> list[str]:
    """``n`` distinct colours of matplotlib's default cycle."""
    cycle = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    return [cycle[i % len(cycle)] for i in range(n)]


def caption(document: Mapping[str, Any]) -> str:
    m = document["machine"]
    s = document["settings"]
    regions = document["regions"]
    honest = document.get("honest_produce") or {}
    rate = honest.get("bytes_per_s")
    return (
        f"{document['timestamp']} · {m['cores']} cores · {s['duration_s']:g} s measured per phase "
        f"(recovery: the flood's {s['recovery_flood_s']:g} s and {s['recovery_s']:g} s after) · flooded "
        f"region {regions['flooded']}, other {regions['other']}"
        + (f" · a region's honest fleet produced {rate / 1000:,.1f} kB/s" if rate else "")
        + f" · p99 over the answered; a device falls back after {s['wait_ms']:g} ms"
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


def recovery_caption(document: Mapping[str, Any]) -> str:
    s = document["settings"]
    parts = []
    for phase in _recovery_phases(document):
        rec = phase["recovery"]
        flood = phase.get("flooder") or {}
        at_end = rec["flooded_backlog_at_flood_end"]
        parts.append(
            f"{phase_label(phase).replace(chr(10), ' ')}: backlog "
            f"{'-' if at_end is None else f'{at_end:,}'} at the flood's end, "
            f"{rec['flooded_backlog_at_window_end']:,} at the window's; flooder told up to "
            f"{flood.get('throttle_cb_max_ms', 0):,.0f} ms"
        )
    return (
        f"{document['timestamp']} · {s['rate_per_s']:g} honest req/s per region · a flood of "
        f"{s['recovery_flood_s']:g} s, then {s['recovery_s']:g} s · recovered: every later second "
        f"{100 * s['recovered_share']:g}% within {s['device_deadline_ms']:g} ms · " + " · ".join(parts)
    )


def plot_recovery(document: Mapping[str, Any], path: Path) -> bool:
    """The recovery phases' curves, second by second: the share within the deadline, the p99, the
    throttles told; saved to ``path``. False (nothing drawn) without a recovery phase."""
    if not _recovery_phases(document):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regions = [document["regions"]["flooded"], document["regions"]["other"]]
    fig, axes = plt.subplots(3, 1, figsize=(14, 13), sharex=True)
    recovery_panel(axes[0], document, regions)
    p99_panel(axes[1], document, regions)
    throttle_panel(axes[2], document, regions)
    for ax in axes[:2]:
        ax.set_xlabel("")
    fig.suptitle(textwrap.fill(recovery_caption(document), 200), fontsize=9, x=0.01, ha="left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
