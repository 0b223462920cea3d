"""The demo's latency plot."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgestream.pipeline.settings import DEFAULT_REGIONS
from edgestream.workers.local.fleetreport import FleetReport, RegionReport
from edgestream.workers.local.latency_plot import plot_latency

if TYPE_CHECKING:
    from pathlib import Path


def test_the_plot_says_so_when_nothing_was_answered(tmp_path: Path) -> None:
    report = FleetReport(
        {r.name: RegionReport(sent=3, fallbacks=3) for r in DEFAULT_REGIONS}, 0.0, 1.0, 1.0, 0
    )
    path = plot_latency(report, tmp_path / "latency.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_plot_shades_a_worker_outage(tmp_path: Path) -> None:
    region = RegionReport(latencies_ms=[20.0, 30.0, 250.0], result_times_s=[1.0, 2.0, 9.0])
    report = FleetReport({"eu-west": region}, 0.0, 10.0, 10.0, 0)
    path = plot_latency(report, tmp_path / "latency.png", down=("eu-west", 3.0, 6.0))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
