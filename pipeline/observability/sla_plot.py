"""The SLA report's picture: round-trip CDF per region and version, and the error budget left."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from edgestream.pipeline.observability.sla import ALL_VERSIONS, RoundTrip, SlaReport


def plot_sla(report: SlaReport, trips: list[RoundTrip], path: Path) -> Path:
    """Write the PNG: the answered round trips' CDF per region and version (the threshold dashed),
    and each region and model's error budget left per SLO."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (cdf, budget) = plt.subplots(1, 2, figsize=(13, 4.8))
    latencies: dict[str, list[float]] = defaultdict(list)
    for trip in trips:
        if trip.outcome == "answered":
            latencies[f"{trip.region} {trip.model} v{trip.version}"].append(trip.latency_ms)
    for label, values in sorted(latencies.items()):
        lat = np.sort(np.asarray(values))
        cdf.plot(
            lat, np.arange(1, len(lat) + 1) / len(lat), label=f"{label} (p99 {np.percentile(lat, 99):.1f} ms)"
        )
    cdf.axvline(report.latency_threshold_ms, color="red", ls="--", lw=1)
    cdf.axhline(report.latency_target, color="grey", ls=":", lw=1)
    cdf.set(xscale="log", xlabel="round trip (ms)", ylabel="share answered", title="round trips answered")
    if latencies:
        cdf.legend(fontsize=7)
    rows = [r for r in report.rows if r.version == ALL_VERSIONS]
    x = np.arange(len(rows))
    series: list[tuple[float, str, list[float | None]]] = [
        (-0.2, "availability", [r.availability_budget_left for r in rows]),
        (0.2, "latency", [r.latency_budget_left for r in rows]),
    ]
    for offset, name, shares in series:
        percent = [np.nan if v is None else v * 100 for v in shares]
        bars = budget.bar(x + offset, np.clip(percent, -100, 100), width=0.4, label=name)
        budget.bar_label(bars, [f"{p:.0f}%" for p in percent], fontsize=7)  # the true value, if clipped
    budget.set_ylim(-115, 115)  # an overspent budget shows at -100% (clipped), labelled with its value
    budget.axhline(0, color="black", lw=0.8)
    budget.set_xticks(x, [f"{r.region}\n{r.model}" for r in rows], fontsize=7)
    budget.set(ylabel="error budget left (%)", title="error budget left (below 0: overspent)")
    budget.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
