"""The demo's summary: one row per region from the devices' and the workers' own counts, the cloud
aggregator's view added up per (region, model, version), the story's versions as the devices saw
them, what the SDK phones saw per device class and link profile (``device_summary``), and the round
trip per path (``path_rows``: devices that produce to Kafka themselves apart from phones on each
simulated link, whose link alone can take more than the deadline)."""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgestream.pipeline.learning.drift import MIN_SAMPLES
from edgestream.pipeline.observability.sla import RoundTrip
from edgestream.workers.local.fleetreport import FleetReport
from edgestream.workers.local.phones import DeviceRow
from edgestream.workers.local.story import StoryReport

log = logging.getLogger(__name__)

VIEW_POLL_S = 0.5
"""Time between two reads of the aggregator's view while it settles."""
JOIN_STEADY_READS = 3
"""Reads in a row with the same joined count after which the label join counts as settled."""
JOIN_GRACE_S = 15.0
"""Once every answer is counted, the longest the view is read again for a first joined label."""


@dataclass(frozen=True, slots=True)
class RegionSummary:
    """One row of the summary table."""

    region: str
    sent: int
    bad_sent: int
    results: int
    dead_letters: int
    fallbacks: int
    late: int
    duplicates: int
    throughput_per_s: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    accuracy: float | None
    mean_batch: float | None
    dead_letter_reasons: dict[str, int]


@dataclass(frozen=True, slots=True)
class VersionRow:
    """One version of the story's model on one kind of input, from the devices' own answers."""

    version: int
    role: str
    """``reference``, ``retrained``, ``bad`` (or ``other``)."""
    inputs: str
    """``original``, ``shifted-a`` (before retraining) or ``shifted-b`` (inputs it never trained on)."""
    answers: int
    accuracy: float


def summarise_region(region: str, report: FleetReport, worker_stats: Mapping[str, Any]) -> RegionSummary:
    """The row of ``region`` (of every region when it is not one of the fleet's), with the dead letters
    its workers counted in ``worker_stats``."""
    r = report.regions[region] if region in report.regions else report.totals()
    reasons: dict[str, int] = worker_stats.get("dead_letters", {})
    return RegionSummary(
        region=region,
        sent=r.sent,
        bad_sent=r.bad_sent,
        results=r.results,
        dead_letters=sum(reasons.values()),
        fallbacks=r.fallbacks,
        late=r.late,
        duplicates=r.duplicates,
        throughput_per_s=r.results / report.send_s if report.send_s else 0.0,
        p50_ms=r.percentile_ms(50),
        p95_ms=r.percentile_ms(95),
        p99_ms=r.percentile_ms(99),
        accuracy=r.accuracy,
        mean_batch=float(np.mean(r.batch_sizes)) if r.batch_sizes else None,
        dead_letter_reasons=dict(reasons),
    )


def summarise_all(report: FleetReport, worker_stats: Mapping[str, Mapping[str, Any]]) -> RegionSummary:
    """The total row: every region, the dead letters of every worker added up."""
    reasons: dict[str, int] = {}
    for stats in worker_stats.values():
        for reason, count in stats.get("dead_letters", {}).items():
            reasons[reason] = reasons.get(reason, 0) + count
    return summarise_region("all", report, {"dead_letters": reasons})


def settled_windows(
    url: str, regions: Collection[str], answered: int, timeout_s: float
) -> list[dict[str, Any]]:
    """The windows of ``regions`` the aggregator at ``url`` serves, once they count the ``answered``
    results the workers committed, the label join has settled and no window's drift waits for its
    threshold's simulation (bounded by ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    rows: list[dict[str, Any]] = []
    counted_at: float | None = None
    joined_before, steady = -1, 0
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/windows", timeout=5) as response:
                view = json.load(response)
        except (OSError, ValueError):
            time.sleep(VIEW_POLL_S)
            continue
        rows = [row for row in view.get("windows", []) if row["region"] in regions]
        if counted_at is None and sum(int(row["results"]) for row in rows) >= answered:
            counted_at = time.monotonic()
        # Summaries arrive with the results; the label join goes through a re-keyed topic and trails
        # them: once every answer is counted, wait until the joined count is above 0 and stops moving,
        # or JOIN_GRACE_S more at most.
        joined = sum(int(row["joined"]) for row in rows)
        steady = steady + 1 if joined == joined_before else 0
        joined_before = joined
        # A window whose drift threshold is still being simulated (a retrained version's own
        # reference, on a busy box) is served unjudged: wait for its judgement too.
        if (
            counted_at is not None
            and steady >= JOIN_STEADY_READS
            and (joined > 0 or time.monotonic() - counted_at > JOIN_GRACE_S)
            and not _drift_pending(rows)
        ):
            return rows
        time.sleep(VIEW_POLL_S)
    log.warning(
        "the aggregator's view did not settle at the %d answers the workers committed (%d windows' drift "
        "still pending)",
        answered,
        len(_drift_pending(rows)),
    )
    return rows


def _drift_pending(rows: list[dict[str, Any]]) -> list[str]:
    """The keys of the windows whose drift waits for its threshold's simulation."""
    return [str(row.get("key")) for row in rows if (row.get("drift") or {}).get("pending")]


def device_agreement(url: str) -> list[dict[str, Any]]:
    """The aggregator's ``/device-agreement`` rows (empty when it does not answer: it is read once,
    after the fleet's last reports)."""
    try:
        with urllib.request.urlopen(url + "/device-agreement", timeout=5) as response:
            rows = json.load(response).get("rows", [])
    except (OSError, ValueError) as err:
        log.warning("the aggregator's device agreement could not be read: %s", err)
        return []
    return rows if isinstance(rows, list) else []


def cloud_totals(windows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The aggregator's ``windows`` added up per (region, model, version): results, dead letters,
    accuracy against the labels, the largest drift judged (windows of ``MIN_SAMPLES`` or more)."""
    totals: dict[tuple[str, str, int], dict[str, Any]] = {}
    for row in windows:
        entry = totals.setdefault(
            (row["region"], row["model"], row["version"]),
            {
                "region": row["region"],
                "model": row["model"],
                "version": row["version"],
                "results": 0,
                "dead_letters": 0,
                "joined": 0,
                "correct": 0.0,
                "max_psi": None,
                "drift_flagged": False,
            },
        )
        entry["results"] += int(row["results"])
        entry["dead_letters"] += sum(row["dead_letters"].values())
        if row["accuracy"] is not None:
            entry["joined"] += int(row["joined"])
            entry["correct"] += row["accuracy"] * int(row["joined"])
        psi = row["drift"].get("max_psi")
        if psi is not None and row["drift"].get("samples", 0) >= MIN_SAMPLES:  # judged windows only
            entry["max_psi"] = psi if entry["max_psi"] is None else max(entry["max_psi"], psi)
        entry["drift_flagged"] = entry["drift_flagged"] or bool(row["drift"].get("flagged"))
    out = []
    for entry in totals.values():
        joined = entry.pop("joined")
        correct = entry.pop("correct")
        entry["labelled"] = joined
        entry["accuracy"] = correct / joined if joined else None
        out.append(entry)
    return sorted(out, key=lambda e: (e["region"], e["model"], e["version"]))


def version_rows(report: FleetReport, story: StoryReport) -> list[VersionRow]:
    """Accuracy of each version of the story's model per kind of input, from the devices' answers."""
    counts: dict[tuple[int, str], list[int]] = {}
    for answer in report.totals().answers:
        if answer.model != story.model:
            continue
        entry = counts.setdefault((answer.version, answer.inputs), [0, 0])
        entry[0] += 1
        entry[1] += int(answer.correct)
    order = {"original": 0, "shifted-a": 1, "shifted-b": 2}
    keys = sorted(counts, key=lambda k: (k[0], order[k[1]]))
    return [
        VersionRow(
            version,
            story.role(version),
            inputs,
            counts[version, inputs][0],
            counts[version, inputs][1] / counts[version, inputs][0],
        )
        for version, inputs in keys
    ]


def device_summary(row: DeviceRow) -> dict[str, Any]:
    """One (device class, link profile) row of the summary's devices section, as JSON types: what the
    phones' SDK counted (calls, answered by the edge, by the fallback with reasons, tiers asked,
    replies refused, reconnects, ...) and the fallbacks added up."""
    return {**asdict(row), "fallbacks": row.fallbacks}


def device_totals(rows: Collection[DeviceRow]) -> dict[str, int]:
    """The devices section added up: phones, calls, edge answers, fallbacks, errors, replies refused,
    reconnects, failovers, outages."""
    return {
        "phones": sum(r.phones for r in rows),
        "calls": sum(r.calls for r in rows),
        "edge": sum(r.edge for r in rows),
        "fallbacks": sum(r.fallbacks for r in rows),
        "errors": sum(sum(r.errors.values()) for r in rows),
        "refused_replies": sum(r.refused_replies for r in rows),
        "reconnects": sum(r.reconnects for r in rows),
        "failovers": sum(r.failovers for r in rows),
        "outages": sum(r.outages for r in rows),
    }


def bad_answers_after_rollback(report: FleetReport, story: StoryReport) -> int | None:
    """Answers by the bad version to requests captured once every worker applied the rollback."""
    if story.bad is None or story.rollback_applied_at_s is None:
        return None
    return sum(
        1
        for a in report.totals().answers
        if a.model == story.model and a.version == story.bad and a.capture_s > story.rollback_applied_at_s
    )


@dataclass(frozen=True, slots=True)
class PathRow:
    """The device round trip of one path (``RoundTrip.path``), or of every path (``all``)."""

    path: str
    requests: int
    """Good requests that ended: answered by the edge in time, or by the device's fallback."""
    edge: int
    """Answered by the edge inside the device's deadline."""
    fallbacks: int
    """Answered by the device's own fallback model (the edge late, or unreachable)."""
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    """Percentiles of the round trip (capture to answer) over the edge's answers."""

    @property
    def edge_share(self) -> float | None:
        """Share of the requests the edge answered inside the deadline."""
        return self.edge / self.requests if self.requests else None

    def to_dict(self) -> dict[str, Any]:
        """JSON types, with the share."""
        return {**asdict(self), "edge_share": self.edge_share}


def _path_row(path: str, trips: list[RoundTrip]) -> PathRow:
    latencies = [t.latency_ms for t in trips if t.outcome == "answered"]
    p50, p95, p99 = (float(v) for v in np.percentile(latencies, (50, 95, 99))) if latencies else (None,) * 3
    return PathRow(path, len(trips), len(latencies), len(trips) - len(latencies), p50, p95, p99)


def path_rows(trips: Iterable[RoundTrip]) -> list[PathRow]:
    """One row per path, ``direct`` first and the phones' links after it by name, then ``all`` when
    there is more than one path."""
    by_path: dict[str, list[RoundTrip]] = {}
    for trip in trips:
        by_path.setdefault(trip.path, []).append(trip)
    rows = [_path_row(path, by_path[path]) for path in sorted(by_path, key=lambda p: (p != "direct", p))]
    if len(rows) > 1:
        rows.append(_path_row("all", [t for ts in by_path.values() for t in ts]))
    return rows
