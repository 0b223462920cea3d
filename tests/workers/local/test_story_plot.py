"""The story's plot."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgestream.workers.local.fleetreport import Answer, FleetReport, RegionReport
from edgestream.workers.local.story import StoryEvent, StoryReport
from edgestream.workers.local.story_plot import plot_story

if TYPE_CHECKING:
    from pathlib import Path


def test_the_story_plot_draws_versions_accuracy_drift_and_events(tmp_path: Path) -> None:
    story = StoryReport("embedding-scorer", reference=4, retrained=5, bad=6)
    story.events = [StoryEvent(10.0, "shift", "scanners change"), StoryEvent(20.0, "canary", "v5", 5)]
    answers = [
        Answer(t / 4, "embedding-scorer", 4 if t < 80 else 5, t % 3 > 0, "original") for t in range(160)
    ]
    report = FleetReport({"eu": RegionReport(answers=answers)}, 1_000.0, 40.0, 40.0, 0)
    windows = [
        {
            "model": "embedding-scorer",
            "version": version,
            "start_ms": (1_000 + start_s) * 1000,
            "drift": {"max_psi": psi, "excess": psi / 0.2, "samples": samples, "false_positive_rate": 0.05},
        }
        for version, start_s, psi, samples in [(4, 0, 0.05, 250), (4, 15, 2.5, 300), (5, 30, 0.1, 50)]
    ]
    path = plot_story(report, story, windows, 15.0, tmp_path / "story.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
