"""What ``edgestream demo`` measured: the summary of the fleet's, the story's, the workers' and the
cloud's reports (``DemoResult``), its plots, and its JSON copy (``summary.json``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgestream.workers.local.demo_settings import DemoPaths, DemoSettings
from edgestream.workers.local.fleetreport import FleetReport
from edgestream.workers.local.hostcpu import HostCpu
from edgestream.workers.local.latency_plot import plot_latency
from edgestream.workers.local.outage import OutageTimes
from edgestream.workers.local.outage_summary import OutageSummary, summarise_outage
from edgestream.workers.local.partcpu import PartCpu
from edgestream.workers.local.phones import DeviceRow
from edgestream.workers.local.story import StoryReport, count_drift
from edgestream.workers.local.story_plot import plot_story
from edgestream.workers.local.summary import (
    PathRow,
    RegionSummary,
    VersionRow,
    bad_answers_after_rollback,
    cloud_totals,
    device_summary,
    path_rows,
    summarise_all,
    summarise_region,
    version_rows,
)


@dataclass(frozen=True, slots=True)
class DemoResult:
    """What the demo measured."""

    rows: list[RegionSummary]
    total: RegionSummary
    paths: DemoPaths
    broker_log: Path | None
    """The local broker's log, or None when the demo used another cluster."""
    model_accuracy: dict[str, float]
    cloud: list[dict[str, Any]] = field(default_factory=list)
    """The aggregator's view per (region, model, version), all windows added up: results, dead-letter
    rate, accuracy against the backends' labels, the largest drift judged (windows of enough samples)."""
    story: StoryReport | None = None
    """The learning loop's events and measurements, when told."""
    versions: list[VersionRow] = field(default_factory=list)
    """Accuracy of each version of the story's model on each kind of input, as the devices saw it."""
    bad_after_rollback: int | None = None
    """Answers by the bad candidate to requests captured after every worker applied its rollback."""
    windows: list[dict[str, Any]] = field(default_factory=list)
    """The aggregator's windows of the demo's regions, as its view served them."""
    fleet_started_at: float = 0.0
    """When the fleet started (unix seconds): the story's and the plots' time zero."""
    devices: list[DeviceRow] = field(default_factory=list)
    """What the SDK phones saw, per device class and link profile (none without phones)."""
    refused_replies: dict[str, int] = field(default_factory=dict)
    """Replies the Kafka-native devices refused to open, by reason."""
    device_agreement: list[dict[str, Any]] = field(default_factory=list)
    """The aggregator's ``/device-agreement`` rows: late edge answers vs the phones' fallbacks."""
    round_trip_paths: list[PathRow] = field(default_factory=list)
    """The device round trip per path: Kafka-native devices, phones per link, all (``path_rows``)."""
    outage: OutageSummary | None = None
    """The worker outage's times and who answered meanwhile, when one was told (``outage_summary.py``)."""
    host_cpu: HostCpu | None = None
    """The machine's busy cores and stolen share while the devices ran (``hostcpu.py``; None: unknown)."""
    part_cpu: list[PartCpu] = field(default_factory=list)
    """Each part's cores and CPU ms per request while the devices ran (``partcpu.py``; empty: unknown)."""


@dataclass(frozen=True, slots=True)
class Measured:
    """What the running parts left: the devices' report, the story's, the workers' and the cloud's."""

    report: FleetReport
    story: StoryReport | None
    worker_stats: dict[str, dict[str, Any]]
    """Region -> its worker's stats file at exit ({} when it wrote none)."""
    windows: list[dict[str, Any]]
    """The aggregator's windows of the demo's regions."""
    device_agreement: list[dict[str, Any]] = field(default_factory=list)
    """The aggregator's device-agreement rows (the phones' reports)."""
    outage: OutageTimes | None = None
    """What the worker outage did and when, when one was told."""
    host_cpu: HostCpu | None = None
    """The machine's busy cores and stolen share while the devices ran (None: not Linux)."""
    part_cpu: list[PartCpu] = field(default_factory=list)
    """Each part's CPU while the devices ran (empty: not Linux)."""


def summarise(
    settings: DemoSettings,
    paths: DemoPaths,
    broker_log: Path | None,
    accuracy: dict[str, float],
    measured: Measured,
) -> DemoResult:
    """The summary of what was measured; the plots are written."""
    report, story = measured.report, measured.story
    rows = [summarise_region(r.name, report, measured.worker_stats.get(r.name, {})) for r in settings.regions]
    down = measured.outage
    plot_latency(
        report,
        paths.plot,
        down=None
        if down is None
        else (down.region, down.signalled_at - report.started_at, down.restarted_at - report.started_at),
    )
    versions: list[VersionRow] = []
    bad_after: int | None = None
    if story is not None:
        versions = version_rows(report, story)
        bad_after = bad_answers_after_rollback(report, story)
        story.drift_windows = count_drift(
            story, measured.windows, report.started_at, settings.aggregator_window_s
        )
        plot_story(report, story, measured.windows, settings.aggregator_window_s, paths.story_plot)
    return DemoResult(
        rows,
        summarise_all(report, measured.worker_stats),
        paths,
        broker_log,
        accuracy,
        cloud_totals(measured.windows),
        story=story,
        versions=versions,
        bad_after_rollback=bad_after,
        windows=measured.windows,
        fleet_started_at=report.started_at,
        devices=report.devices,
        refused_replies=report.refused_replies,
        device_agreement=measured.device_agreement,
        round_trip_paths=path_rows(report.round_trips),
        outage=None
        if measured.outage is None
        else summarise_outage(
            measured.outage,
            report.round_trips,
            report.no_answer,
            deadline_ms=settings.deadline_ms,
            fleet_started_at=report.started_at,
        ),
        host_cpu=measured.host_cpu,
        part_cpu=measured.part_cpu,
    )


def write_summary(settings: DemoSettings, result: DemoResult, measured: Measured) -> None:
    """The JSON copy of the summary, with the settings and the workers' own stats."""
    result.paths.summary.write_text(
        json.dumps(
            {
                "settings": settings.model_dump(mode="json"),
                "regions": [asdict(r) for r in result.rows],
                "total": asdict(result.total),
                "model_accuracy": result.model_accuracy,
                "send_s": measured.report.send_s,
                "unanswered": measured.report.unanswered,
                "worker_stats": measured.worker_stats,
                "cloud": result.cloud,
                "story": None if result.story is None else result.story.to_dict(),
                "versions": [asdict(v) for v in result.versions],
                "bad_after_rollback": result.bad_after_rollback,
                "devices": [device_summary(row) for row in measured.report.devices],
                "phones_not_started": measured.report.phones_not_started,
                "refused_replies": measured.report.refused_replies,
                "loop_lag_peak_ms": measured.report.loop_lag_peak_ms,
                "device_agreement": result.device_agreement,
                "round_trip_paths": [row.to_dict() for row in result.round_trip_paths],
                "outage": None if result.outage is None else result.outage.to_dict(),
                "host_cpu": None if result.host_cpu is None else result.host_cpu.to_dict(),
                "part_cpu": [part.to_dict() for part in result.part_cpu],
            },
            indent=2,
        )
    )
