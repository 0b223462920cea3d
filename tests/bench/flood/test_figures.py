"""The flood bench's figures (``bench/flood/figures.py``), its phase plan and its plot, on hand-made
data: no broker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.flood.figures import (
    REQUEST_OVERHEAD_BYTES,
    count_at,
    grown,
    honest_produce,
    quota_byte_rates,
    rate_between,
    recovered_after_s,
    recovery_bins,
    region_window,
)
from bench.flood.plot import plot
from bench.flood.report import table
from bench.flood.run import expand
from bench.flood.settings import FloodSettings
from edgestream.pipeline.observability.sla import Outcome, RoundTrip
from edgestream.workers.local.fleetreport import NoAnswer


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
        _trip(900, "a", 1.0),  # before the flood ended: out
        _trip(1000, "a", 900.0),  # second 0: late
        _trip(1500, "a", 10.0),  # second 0: on time
        _trip(2100, "a", 2000.0, "fallback"),  # second 1
        _trip(2200, "b", 5.0),  # another region
        _trip(3999, "a", 5.0),  # second 2
        _trip(4000, "a", 5.0),  # the window's end: out
    ]
    no_answer = [NoAnswer(3100, "a", "direct", "run_ended")]
    bins = recovery_bins(trips, no_answer, "a", 1000, 4000, deadline_ms=250)
    assert [(b["t_s"], b["sent"], b["within_deadline_share"]) for b in bins] == [
        (0.0, 2, 0.5),
        (1.0, 1, 0.0),
        (2.0, 2, 0.5),
    ]
    assert recovery_bins([], [], "a", 1000, 3000, deadline_ms=250)[1]["within_deadline_share"] is None


@pytest.mark.parametrize(
    ("shares", "expected"),
    [
        ([0.0, 0.5, 1.0, 0.995, 1.0], 2.0),  # recovered at the third second
        ([0.0, 1.0, 0.2, 1.0, 1.0], 3.0),  # a dip after a good second starts it again
        ([1.0, 1.0, 1.0], 0.0),  # never hurt
        ([0.0, 0.1, 0.5], None),  # never recovered
        ([0.0, 1.0, None, 1.0], 1.0),  # an empty second neither breaks nor makes it
        ([None, None], None),
    ],
)
def test_recovered_after_is_the_start_of_the_last_good_run(
    shares: list[float | None], expected: float | None
) -> None:
    bins = [{"t_s": float(i), "sent": 1, "within_deadline_share": v} for i, v in enumerate(shares)]
    assert recovered_after_s(bins, 0.99) == expected


def test_the_recovery_phases_run_without_a_quota_then_under_each(tmp_path: Path) -> None:
    s = FloodSettings(quota_factors=(20.0,), quota_producer_byte_rates=(16_777_216.0,))
    plan = expand(s, "recovery", 1000.0)
    assert [(p.name, p.quota is None, p.flood) for p in plan] == [
        ("recovery", True, True),
        ("recovery@16777216Bps", False, True),
    ]
    bins = [
        {"t_s": 0.0, "sent": 10, "within_deadline_share": 0.0},
        {"t_s": 1.0, "sent": 10, "within_deadline_share": 1.0},
    ]
    phase = _phase("recovery", flood=True)
    phase["kind"] = "recovery"
    for region in phase["regions"].values():
        region["recovery"] = {"bins": bins, "recovered_after_s": recovered_after_s(bins, 0.99)}
    document = {
        "timestamp": "2026-12-08T00:00:00+00:00",
        "wall_s": 200.0,
        "machine": {"cores": 2},
        "settings": s.model_dump(mode="json", exclude={"out_dir"}),
        "regions": {"flooded": "flooda", "other": "floodb"},
        "honest_produce": {"bytes_per_s": 96_000.0},
        "phases": [_phase("baseline"), phase],
    }
    plot(document, tmp_path / "flood.png")
    assert (tmp_path / "flood.png").stat().st_size > 0
    rows = table(document)
    assert rows.row_count == 4
    assert list(rows.columns[-1].cells) == ["", "", "1 s", "1 s"]
