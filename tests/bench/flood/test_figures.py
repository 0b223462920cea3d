"""The flood bench's figures (``bench/flood/figures.py``), its phase plan and its plot, on hand-made
data: no broker."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bench.flood import fleet as flood_fleet
from bench.flood.figures import (
    REQUEST_OVERHEAD_BYTES,
    backlog_drain,
    count_at,
    grown,
    honest_produce,
    quota_byte_rates,
    rate_between,
    recovered_after_s,
    recovery_bins,
    region_window,
    throttle_max_ms,
)
from bench.flood.flooder import _Stats
from bench.flood.plot import plot, plot_recovery
from bench.flood.report import recovery_table, table
from bench.flood.run import expand
from bench.flood.settings import FloodSettings
from edgestream.pipeline.observability.sla import Outcome, RoundTrip
from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.local import fleet as fleet_module
from edgestream.workers.local.fleetreport import NoAnswer
from edgestream.workers.local.rdkafka import DeviceProducer


def _trip(capture_ms: float, region: str, latency_ms: float, outcome: Outcome = "answered") -> RoundTrip:
    return RoundTrip(capture_ms, region, "m", 1 if outcome == "answered" else None, latency_ms, outcome)


def test_region_window_counts_only_its_region_and_window() -> None:
    trips = [
        _trip(999, "a", 1.0),  # before the window
        _trip(1000, "a", 10.0),
        _trip(1500, "a", 40.0),
        _trip(1600, "a", 200.0),
        _trip(1700, "a", 900.0),
        _trip(1800, "a", 2000.0, "fallback"),
        _trip(1900, "b", 5.0),  # another region
        _trip(2000, "a", 5.0),  # at the window's end: out
    ]
    no_answer = [NoAnswer(1950, "a", "direct", "run_ended"), NoAnswer(1950, "b", "direct", "run_ended")]
    got = region_window(trips, no_answer, "a", 1000, 2000, sla_ms=50, deadline_ms=250)
    assert (got["sent"], got["answered"], got["fallbacks"], got["unanswered"]) == (6, 4, 1, 1)
    assert got["sent_per_s"] == 6.0
    assert got["answered_share"] == pytest.approx(4 / 6)
    assert got["within_sla_share"] == pytest.approx(2 / 6)
    assert got["within_deadline_share"] == pytest.approx(3 / 6)
    assert got["max_ms"] == 900.0
    assert got["p50_ms"] == pytest.approx(120.0)
    empty = region_window([], [], "a", 0, 1000, sla_ms=50, deadline_ms=250)
    assert (empty["sent"], empty["p99_ms"], empty["answered_share"]) == (0, None, None)


def test_the_flooders_rate_is_interpolated_over_the_window() -> None:
    samples = [(10.0, 0, 0), (11.0, 100, 1000), (12.0, 300, 3000), (13.0, 300, 3000)]
    assert count_at(samples, 9.0) == (0.0, 0.0)
    assert count_at(samples, 11.5) == (200.0, 2000.0)
    assert count_at(samples, 20.0) == (300.0, 3000.0)
    assert rate_between(samples, 10.5, 12.5) == (125.0, 1250.0)
    assert rate_between(samples, 12.0, 12.0) == (0.0, 0.0)
    assert rate_between([], 1.0, 2.0) == (0.0, 0.0)


def test_grown_counters() -> None:
    assert grown({"rate_limited": 5, "stale": 2}, {"rate_limited": 9, "stale": 2, "replayed": 1}) == {
        "rate_limited": 4,
        "replayed": 1,
    }


def test_quotas_of_the_sweep() -> None:
    assert quota_byte_rates([], [2.0, 20.0], 1000.4) == [(2001, 2.0), (20008, 20.0)]
    assert quota_byte_rates([5e5], [2.0], None) == [(5e5, None)]
    with pytest.raises(ValueError, match="no honest produce rate"):
        quota_byte_rates([], [2.0], None)


def _phase(name: str, flood: bool = False, quota: float | None = None) -> dict[str, Any]:
    region = {
        "sent": 3000,
        "sent_per_s": 200.0,
        "answered": 2990,
        "answered_share": 0.997,
        "p50_ms": 12.0,
        "p99_ms": 80.0,
        "within_sla_share": 0.95,
        "within_deadline_share": 0.997,
        "honest_record_bytes": 300.0,
        "honest_record_bytes_per_s": 60_000.0,
        "worker_cores": 0.2,
        "worker_ms_per_honest_request": 1.0,
        "backlog_at_window_end": 0,
    }
    return {
        "phase": name,
        "quota": None if quota is None else {"producer_byte_rate": quota},
        "regions": {"flooda": dict(region), "floodb": dict(region, p99_ms=None, within_sla_share=None)},
        "flooder": {"acked_per_s": 1e5, "acked_bytes_per_s": 3e7} if flood else None,
        "cpu_cores": {"broker": 1.0},
    }


def test_the_honest_rate_sizes_the_quota_in_request_bytes() -> None:
    honest = honest_produce(_phase("baseline"))
    assert honest["bytes_per_s"] == 60_000.0 + 200.0 * REQUEST_OVERHEAD_BYTES
    assert honest["records_per_s"] == 200.0


def test_phase_plan_sweeps_the_flood_under_each_quota_and_controls_with_the_tightest() -> None:
    s = FloodSettings(
        phases=("flood_quota", "baseline", "quota"), quota_factors=(20.0, 2.0), quota_producer_byte_rates=()
    )
    assert s.phases == ("baseline", "quota", "flood_quota")
    assert [p.name for p in expand(s, "baseline", None)] == ["baseline"]
    quota = expand(s, "quota", 1000.0)
    assert [(p.name, p.factor) for p in quota] == [("quota", 2.0)]
    swept = expand(s, "flood_quota", 1000.0)
    assert [p.name for p in swept] == ["flood_quota@20x", "flood_quota@2x"]
    assert all(p.flood and p.quota is not None for p in swept)
    assert swept[1].quota == {
        "producer_byte_rate": 2000,
        "consumer_byte_rate": None,
        "request_percentage": None,
    }
    one = FloodSettings(quota_factors=(2.0,), quota_producer_byte_rates=())
    assert [p.name for p in expand(one, "flood_quota", 1000.0)] == ["flood_quota"]


def test_plot_and_table_draw_every_phase(tmp_path: Path) -> None:
    document = {
        "timestamp": "2026-12-08T00:00:00+00:00",
        "wall_s": 200.0,
        "machine": {"cores": 2},
        "settings": FloodSettings().model_dump(mode="json", exclude={"out_dir"}),
        "regions": {"flooded": "flooda", "other": "floodb"},
        "honest_produce": {"bytes_per_s": 96_000.0},
        "phases": [
            _phase("baseline"),
            _phase("flood", flood=True),
            _phase("flood_quota", flood=True, quota=192_000.0),
        ],
    }
    plot(document, tmp_path / "flood.png")
    assert (tmp_path / "flood.png").stat().st_size > 0
    assert table(document).row_count == 6


def test_recovery_bins_by_capture_second_after_the_flood() -> None:
    trips = [
        _trip(-100, "a", 1.0),  # before the first bin: out
        _trip(100, "a", 30.0),  # second -1 (the flood): on time, within the SLA
        _trip(900, "a", 100.0),  # second -1: on time, not within the SLA
        _trip(1000, "a", 900.0),  # second 0: late
        _trip(1500, "a", 10.0),  # second 0: on time
        _trip(2100, "a", 2000.0, "fallback"),  # second 1
        _trip(2200, "b", 5.0),  # another region
        _trip(3999, "a", 5.0),  # second 2
        _trip(4000, "a", 5.0),  # the window's end: out
    ]
    no_answer = [NoAnswer(3100, "a", "direct", "run_ended")]
    throttles = [(1.2, 500.0), (1.3, 800.0), (2.5, 0.0), (9.0, 7.0)]  # unix s, ms
    bins = recovery_bins(
        trips, no_answer, "a", 1000, 500, 4000, deadline_ms=250, sla_ms=50, throttles=throttles
    )
    assert [
        (b["t_s"], b["sent"], b["answered"], b["within_deadline_share"], b["throttle_max_ms"]) for b in bins
    ] == [(-1.0, 2, 2, 1.0, 0.0), (0.0, 2, 2, 0.5, 800.0), (1.0, 1, 0, 0.0, 0.0), (2.0, 2, 1, 0.5, 0.0)]
    assert [b["within_sla_share"] for b in bins] == [0.5, 0.5, 0.0, 0.5]
    assert bins[0]["p99_ms"] == pytest.approx(99.3)
    assert bins[2]["p99_ms"] is None
    empty = recovery_bins([], [], "a", 1000, 1000, 3000, deadline_ms=250, sla_ms=50)
    assert [b["t_s"] for b in empty] == [0.0, 1.0]
    assert empty[1]["within_deadline_share"] is None


@pytest.mark.parametrize(
    ("shares", "expected"),
    [
        ([0.0, 0.5, 1.0, 0.995, 1.0], 2.0),  # recovered at the third second
        ([0.0, 1.0, 0.2, 1.0, 1.0], 3.0),  # recovered, dipped, recovered again: from the last time
        ([0.0, 1.0, 1.0, 1.0, 0.98], None),  # recovered, then dipped in the last second: never
        ([1.0, 1.0, 1.0], 0.0),  # never hurt
        ([0.0, 0.1, 0.5], None),  # never recovered
        ([0.0, 0.989, 0.99], 2.0),  # the threshold itself counts
        ([0.0, 1.0, None, 1.0], 1.0),  # an empty second neither breaks nor makes it
        ([0.0, 1.0, 1.0, None], 1.0),  # nor at the end
        ([None, None], None),
        ([], None),
    ],
)
def test_recovered_after_is_the_start_of_the_last_good_run(
    shares: list[float | None], expected: float | None
) -> None:
    bins = [{"t_s": float(i), "sent": 1, "within_deadline_share": v} for i, v in enumerate(shares)]
    assert recovered_after_s(bins, 0.99) == expected


def test_recovered_after_ignores_the_bins_of_the_flood() -> None:
    flood = [{"t_s": float(t), "sent": 1, "within_deadline_share": 1.0} for t in (-3, -2, -1)]
    after = [{"t_s": float(t), "sent": 1, "within_deadline_share": v} for t, v in ((0, 0.0), (1, 1.0))]
    assert recovered_after_s(flood + after, 0.99) == 1.0
    assert recovered_after_s(flood, 0.99) is None  # no second after the flood at all
    bad_flood = [dict(b, within_deadline_share=0.0) for b in flood]
    good_after = [dict(b, within_deadline_share=1.0) for b in after]
    assert recovered_after_s(bad_flood + good_after, 0.99) == 0.0


def test_throttles_told_in_a_span() -> None:
    throttles = [(1.0, 10.0), (2.0, 2_500.0), (3.0, 0.0), (4.0, 40.0)]
    assert throttle_max_ms(throttles, 1.5, 4.0) == (2_500.0, 1)  # the end is out; a 0 is no throttle
    assert throttle_max_ms(throttles, 0.0, float("inf")) == (2_500.0, 3)
    assert throttle_max_ms([], 0.0, 1.0) == (0.0, 0)


def test_backlog_drain() -> None:
    assert backlog_drain(1_000_000, 850_000, 30.0, cleared_below=200) == {
        "drain_per_s": 5_000.0,
        "cleared_in_window": False,
        "cleared_after_s_estimate": 200.0,
    }
    assert backlog_drain(3_000, 0, 30.0) == {
        "drain_per_s": 100.0,
        "cleared_in_window": True,
        "cleared_after_s_estimate": None,
    }
    # what was left at the window's end was the honest requests in flight: gone, no estimate
    assert backlog_drain(90_000, 7, 30.0, cleared_below=200)["cleared_after_s_estimate"] is None
    assert backlog_drain(90_000, 7, 30.0)["cleared_after_s_estimate"] == pytest.approx(30.0, abs=0.01)
    assert backlog_drain(100, 200, 30.0)["cleared_after_s_estimate"] is None  # growing
    assert backlog_drain(None, 0, 30.0)["drain_per_s"] is None


def test_the_flooder_reads_throttle_cb_in_seconds() -> None:
    stats = _Stats()
    stats.on_throttle(SimpleNamespace(throttle_time=2.5))
    stats.on_throttle(SimpleNamespace(throttle_time=0.0))  # the throttling ended
    assert (stats.told_max_ms, stats.told) == (2_500.0, 1)


def test_the_fleets_producers_note_their_throttles_while_a_flood_fleet_runs() -> None:
    async def made_inside(throttles: flood_fleet.Throttles) -> Any:
        with flood_fleet._watched_producers(throttles):
            inner = vars(fleet_module)["DeviceProducer"]
            with flood_fleet._watched_producers({}):  # the other region's fleet, side by side
                pass
            assert vars(fleet_module)["DeviceProducer"] is inner  # still watched while the first runs
            return inner(KafkaSettings(), "edgestream-fleet-a")

    throttles: flood_fleet.Throttles = {}
    producer = asyncio.run(made_inside(throttles))
    assert isinstance(producer, flood_fleet.ThrottleWatchedProducer)
    assert vars(fleet_module)["DeviceProducer"] is DeviceProducer  # put back
    producer._throttled(SimpleNamespace(throttle_time=1.25))
    assert [ms for _, ms in throttles["edgestream-fleet-a"]] == [1250.0]
    assert DeviceProducer(KafkaSettings(), "x") is not None


def _recovery_phase(name: str, quota: float | None, shares: list[float]) -> dict[str, Any]:
    bins = [
        {
            "t_s": float(t),
            "sent": 10,
            "answered": 10,
            "within_deadline": round(10 * v),
            "within_deadline_share": v,
            "within_sla_share": v,
            "p99_ms": 20.0 if v else None,
            "throttle_max_ms": 0.0 if v else 3_000.0,
        }
        for t, v in enumerate(shares, start=-2)
    ]
    phase = _phase(name, flood=True, quota=quota)
    phase["kind"] = "recovery"
    phase["flooder"]["throttle_cb_max_ms"] = 3_000.0
    phase["recovery"] = {
        "flood_s": 2.0,
        "after_flood_s": len(shares) - 2.0,
        "stop": {"signal_to_exit_s": 0.3},
        "flooded_backlog_at_flood_end": 50_000,
        "flooded_backlog_at_window_end": 0,
        **backlog_drain(50_000, 0, len(shares) - 2.0),
    }
    for region in phase["regions"].values():
        region["producer_throttle_max_ms"] = 3_000.0
        region["recovery"] = {
            "bins": bins,
            "recovered_after_s": recovered_after_s(bins, 0.99),
            "producer_throttle_max_ms_after_flood": 0.0,
            "producer_last_throttled_after_s": None,
        }
    return phase


def test_the_recovery_phases_run_without_a_quota_then_under_each(tmp_path: Path) -> None:
    s = FloodSettings(quota_factors=(20.0,), quota_producer_byte_rates=(16_777_216.0,))
    plan = expand(s, "recovery", 1000.0)
    assert [(p.name, p.quota is None, p.flood) for p in plan] == [
        ("recovery", True, True),
        ("recovery@16777216Bps", False, True),
    ]
    document = {
        "timestamp": "2026-12-08T00:00:00+00:00",
        "wall_s": 200.0,
        "machine": {"cores": 2},
        "settings": s.model_dump(mode="json", exclude={"out_dir"}),
        "regions": {"flooded": "flooda", "other": "floodb"},
        "honest_produce": {"bytes_per_s": 96_000.0},
        "phases": [
            _phase("baseline"),
            _recovery_phase("recovery", None, [0.0, 0.0, 0.0, 0.0, 0.0]),
            _recovery_phase("recovery@16777216Bps", 16_777_216.0, [1.0, 0.0, 0.0, 1.0, 1.0]),
        ],
    }
    plot(document, tmp_path / "flood.png")
    assert (tmp_path / "flood.png").stat().st_size > 0
    assert plot_recovery(document, tmp_path / "flood-recovery.png")
    assert (tmp_path / "flood-recovery.png").stat().st_size > 0
    assert table(document).row_count == 6
    rows = recovery_table(document)
    assert rows is not None
    assert rows.row_count == 4
    assert list(rows.columns[3].cells) == ["never", "never", "1 s", "1 s"]
    plain = dict(document, phases=[_phase("baseline")])
    assert recovery_table(plain) is None
    assert not plot_recovery(plain, tmp_path / "none.png")
