"""The demo's latency plot: end-to-end latency CDF per region, and latency over time (a worker outage
shaded on it, when the demo told one)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgestream.workers.local.fleetreport import FleetReport


def plot_latency(
    report: FleetReport, path: Path, sla_ms: float = 50.0, down: tuple[str, float, float] | None = None
) -> Path:
    """Latency CDF per region and latency over time; writes a PNG. ``down``: (region, from, to), in
    seconds since the fleet started, when that region's worker was down (shaded on the timeline)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (cdf, timeline) = plt.subplots(1, 2, figsize=(12, 4.5))
    answered = any(r.latencies_ms for r in report.regions.values())
    if not answered:
        for ax in (cdf, timeline):
            ax.text(
                0.5,
                0.5,
                "no request was answered by the edge",
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
    for name, r in report.regions.items():
        if not r.latencies_ms:
            continue
        lat = np.sort(np.asarray(r.latencies_ms))
        cdf.plot(
            lat, np.arange(1, len(lat) + 1) / len(lat), label=f"{name} (p99 {np.percentile(lat, 99):.1f} ms)"
        )
        timeline.scatter(r.result_times_s, r.latencies_ms, s=3, alpha=0.5, label=name)
    if down is not None:
        region, start_s, end_s = down
        timeline.axvspan(start_s, end_s, color="grey", alpha=0.25, label=f"worker {region} down")
    cdf.axvline(sla_ms, color="red", ls="--", lw=1)
    timeline.axhline(sla_ms, color="red", ls="--", lw=1)
    if answered:
        cdf.set_xscale("log")
        cdf.set_xlabel("end-to-end latency, ms (log)")
    cdf.set_ylabel("share of requests")
    cdf.set_title("Latency CDF per region (red: 50 ms SLA)")
    if answered:
        cdf.legend(loc="lower right")
    timeline.set_yscale("log")
    timeline.set_xlabel("seconds since start")
    timeline.set_ylabel("end-to-end latency, ms (log)")
    timeline.set_title("Latency over time")
    if answered:
        timeline.legend(loc="upper right", markerscale=4)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
