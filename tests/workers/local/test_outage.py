"""The demo's worker outage without processes: its settings, its episode against stand-in workers, the
counts of its summary from round trips and the episode's times, and the stats of two incarnations."""

from __future__ import annotations

import signal

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from edgestream.cli import app
from edgestream.pipeline.observability.sla import Outcome, RoundTrip
from edgestream.pipeline.settings import DEFAULT_REGIONS
from edgestream.workers.local.demo_settings import DemoSettings
from edgestream.workers.local.demo_workers import merge_stats
from edgestream.workers.local.fleetreport import NoAnswer
from edgestream.workers.local.outage import OutageTimes, WorkerOutage, run_outage
from edgestream.workers.local.outage_summary import OutageRow, summarise_outage
from edgestream.workers.local.story import StorySettings

R = "eu-west"
DEADLINE_MS = 250.0
T0 = 1_000.0
"""When the fleet started (unix seconds)."""
TIMES = OutageTimes(
    region=R,
    signal="SIGKILL",
    signalled_at=T0 + 10.0,
    exited_at=T0 + 10.02,
    exit_code=-9,
    restarted_at=T0 + 20.0,
    ready_at=T0 + 22.0,
)


def trip(
    at_s: float, latency_ms: float, outcome: Outcome, path: str = "direct", region: str = R
) -> RoundTrip:
    """A call captured ``at_s`` after the fleet started."""
    version = 1 if outcome == "answered" else None
    capture_ms = (T0 + at_s) * 1000.0
    return RoundTrip(capture_ms, region, "embedding-scorer", version, latency_ms, outcome, DEADLINE_MS, path)


def lost(at_s: float, path: str = "direct", region: str = R) -> NoAnswer:
    return NoAnswer((T0 + at_s) * 1000.0, region, path, "error")


def test_the_outage_counts_who_answered_each_window_by_path_and_when_the_edge_came_back() -> None:
    trips = [
        trip(9.0, 40.0, "answered"),  # before the signal: in no window
        trip(10.5, 255.0, "fallback"),  # a terminal's fallback, just past its deadline
        trip(11.0, 240.0, "fallback", "phone/wifi"),
        trip(12.0, 3.0, "fallback", "phone/3g-flaky"),  # offline: at once
        trip(13.0, 240.0, "fallback", region="us-east"),  # another region's: not counted
        trip(20.5, 245.0, "fallback"),  # restarting, the worker not ready
        trip(21.0, 60.0, "answered", "phone/4g"),  # the phones' first edge answer: at 21.06 s
        trip(21.03, 20.0, "answered"),  # the first edge answer: at 21.05 s
        trip(21.1, 30.0, "answered"),  # after the edge came back: in no window
        trip(25.0, 400.0, "fallback"),
    ]
    no_answer = [lost(15.0, "phone/4g"), lost(15.0, region="us-east"), lost(30.0)]

    s = summarise_outage(TIMES, trips, no_answer, deadline_ms=DEADLINE_MS, fleet_started_at=T0)

    assert (s.region, s.signal, s.deadline_ms) == (R, "SIGKILL", DEADLINE_MS)
    assert s.stopped_at_s == pytest.approx(10.0)
    assert s.exited_after_s == pytest.approx(0.02)
    assert s.down_s == pytest.approx(10.0)
    assert s.ready_after_s == pytest.approx(2.0)
    assert s.edge_back_after_s == pytest.approx(1.05)
    assert s.edge_back_by_path == {"direct": pytest.approx(1.05), "phones": pytest.approx(1.06)}
    assert s.rows == [
        OutageRow("down", "direct", 1, 0, 1, 0, 1, 0, 255.0),
        OutageRow("down", "phones", 3, 0, 2, 2, 0, 1, 240.0),
        OutageRow("down", "all", 4, 0, 3, 2, 1, 1, 255.0),
        OutageRow("restarting", "direct", 2, 1, 1, 1, 0, 0, 245.0),
        OutageRow("restarting", "phones", 1, 1, 0, 0, 0, 0, None),
        OutageRow("restarting", "all", 3, 2, 1, 1, 0, 0, 245.0),
    ]


def test_without_an_edge_answer_after_the_restart_the_restarting_window_runs_to_the_end() -> None:
    trips = [trip(11.0, 245.0, "fallback"), trip(20.5, 245.0, "fallback"), trip(39.0, 251.0, "fallback")]

    s = summarise_outage(TIMES, trips, [lost(39.5)], deadline_ms=DEADLINE_MS, fleet_started_at=T0)

    assert s.edge_back_after_s is None
    assert s.edge_back_by_path == {"direct": None}
    assert s.rows == [
        OutageRow("down", "direct", 1, 0, 1, 1, 0, 0, 245.0),
        OutageRow("restarting", "direct", 3, 0, 2, 1, 1, 1, 251.0),
    ]
    assert s.to_dict()["rows"][1]["no_answer"] == 1


class StandInWorkers:
    """What ``run_outage`` does to the workers, in order."""

    def __init__(self) -> None:
        self.did: list[tuple[str, str]] = []

    async def stop(self, region: str, sig: signal.Signals) -> int:
        self.did.append(("stop", f"{region} {sig.name}"))
        return -int(sig)

    async def restart(self, region: str, ready_timeout_s: float) -> None:
        self.did.append(("restart", region))


async def test_the_episode_stops_the_worker_then_starts_it_again_after_the_duration() -> None:
    workers = StandInWorkers()
    outage = WorkerOutage(duration_s=0.05, start_s=0.01, signal="SIGTERM")

    times = await run_outage(outage, "us-east", workers, ready_timeout_s=1.0)  # type: ignore[arg-type]

    assert workers.did == [("stop", "us-east SIGTERM"), ("restart", "us-east")]
    assert (times.region, times.signal, times.exit_code) == ("us-east", "SIGTERM", -15)
    assert times.signalled_at <= times.exited_at <= times.restarted_at <= times.ready_at
    assert times.restarted_at - times.signalled_at >= 0.05, "down for the duration told, no less"


def test_an_outage_runs_without_the_story_in_a_demo_region_and_ends_while_the_fleet_sends() -> None:
    no_story = StorySettings(enabled=False)
    settings = DemoSettings(story=no_story, duration_s=40.0, outage=WorkerOutage(duration_s=10.0))
    assert settings.outage_region() == DEFAULT_REGIONS[0].name, "the first region by default"
    assert DemoSettings(story=no_story).outage_region() is None, "no outage by default"
    with pytest.raises(ValidationError, match="without the story"):
        DemoSettings(outage=WorkerOutage(duration_s=10.0))
    with pytest.raises(ValidationError, match="not one of the regions"):
        DemoSettings(story=no_story, outage=WorkerOutage(duration_s=10.0, region="mars"))
    with pytest.raises(ValidationError, match="lengthen duration_s"):
        DemoSettings(story=no_story, duration_s=20.0, outage=WorkerOutage(duration_s=10.0, start_s=10.0))


def test_the_demo_command_refuses_an_outage_it_cannot_tell() -> None:
    done = CliRunner().invoke(app, ["demo", "--worker-outage", "5"])
    assert done.exit_code == 2
    assert "--no-story" in done.output
    done = CliRunner().invoke(app, ["demo", "--no-story", "--worker-outage", "50"])
    assert done.exit_code == 2, "40 s of sending cannot hold an outage from 10 s for 50 s"
    assert "lengthen duration_s" in done.output
    done = CliRunner().invoke(app, ["demo", "--no-story", "--outage-at", "5"])
    assert done.exit_code == 2, "an outage's time without an outage"
    assert "--worker-outage" in done.output
    done = CliRunner().invoke(app, ["demo", "--no-story", "--worker-outage", "0"])
    assert done.exit_code == 2
    assert "invalid worker outage" in done.output


def test_two_incarnations_stats_add_up_their_counters_and_keep_the_later_versions() -> None:
    first = {"node": "a", "results": 10, "dead_letters": {"bad_tag": 2}, "served_versions": {"m": 1}}
    later = {
        "node": "b",
        "results": 5,
        "dead_letters": {"bad_tag": 1, "replayed": 3},
        "served_versions": {"m": 2},
    }
    assert merge_stats(first, later) == {
        "node": "b",
        "results": 15,
        "dead_letters": {"bad_tag": 3, "replayed": 3},
        "served_versions": {"m": 2},
    }
    assert merge_stats({}, later) == later
