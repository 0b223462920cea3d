"""The bench's comparisons: the highest sustained load, per-load ratios, the peer block, and the keys
``pipeline.json`` must carry (issue 13's "Bench output")."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from bench.pipeline.ratios import peer_summary, ratio, summary, sustained
from bench.pipeline.results import FloorPoint, Level
from bench.pipeline.run import BenchResult
from bench.pipeline.settings import BenchSettings
from tests.bench.pipeline.levels import level, run

LOADS = (100.0, 1000.0, 2000.0)


def test_ratio_is_none_without_both_numbers_or_with_a_zero_divisor() -> None:
    assert ratio(30.0, 20.0) == pytest.approx(1.5)
    assert ratio(None, 20.0) is None
    assert ratio(30.0, None) is None
    assert ratio(30.0, 0.0) is None


def test_the_highest_unsaturated_load_is_sustained_even_past_a_saturated_one() -> None:
    runs = [run(100, 10, 100), run(1000, 10, 990, saturated=True), run(2000, 10, 1990)]
    best = sustained(LOADS, runs)
    assert best is not None
    assert (best.offered_per_s, best.items_per_s, best.at_highest_load) == (2000, 1990, True)


def test_a_sustained_load_below_the_highest_says_the_limit_was_found() -> None:
    runs = [run(100, 10, 100), run(1000, 10, 1000), run(2000, 10, 1500, saturated=True)]
    best = sustained(LOADS, runs)
    assert best is not None
    assert (best.offered_per_s, best.items_per_s, best.at_highest_load) == (1000, 1000, False)


def test_nothing_is_sustained_when_every_load_saturated_or_did_not_run() -> None:
    assert sustained(LOADS, [None, run(1000, 10, 10, saturated=True), None]) is None


def _levels() -> list[Level]:
    return [
        level(100, (20, 100, False), echo_alo=(10, 100, False), peer_alo=(40, 100, False)),
        level(1000, (60, 1000, False), echo_alo=(30, 1000, False), peer_alo=(30, 1000, False)),
        level(2000, (900, 1500, True), echo_alo=(50, 2000, False), peer_alo=(100, 1600, True)),
    ]


def test_the_device_p99_and_the_sustained_load_are_compared_with_the_non_transactional_echo() -> None:
    out = summary(_levels(), ["pipeline", "echo_alo", "peer_alo"])
    assert out["device_p99_ms"] == {"100": 20, "1000": 60, "2000": 900}
    assert out["device_p99_vs_echo_alo"] == pytest.approx({"100": 2.0, "1000": 2.0, "2000": 18.0})
    # the pipeline sustained 1000/s (1000 items/s), the echo 2000/s (2000 items/s)
    assert out["sustained_vs_echo_alo"] == pytest.approx(0.5)
    assert out["sustained"]["pipeline"]["offered_per_s"] == 1000
    assert out["sustained"]["echo_alo"]["at_highest_load"] is True


def test_the_peer_block_compares_the_pipeline_with_each_guarantee_that_ran() -> None:
    out = peer_summary(_levels(), "quixstreams 9.9", "exactly_once", {"at_least_once": None})
    assert out["name"] == "quixstreams 9.9"
    assert out["exactly_once"] is None  # not run
    alo = out["at_least_once"]
    assert alo["commit_interval_s"] == 5.0  # Quix's default, recorded as such
    assert alo["items_per_s"] == {"100": 100, "1000": 1000, "2000": 1600}
    assert alo["p99_ms"] == {"100": 40, "1000": 30, "2000": 100}
    assert alo["p99_ratio"] == pytest.approx({"100": 0.5, "1000": 2.0, "2000": 9.0})
    # both sustained 1000/s: the pipeline's 1000 items/s over the peer's 1000
    assert alo["items_per_s_ratio"] == pytest.approx(1.0)


def test_pipeline_json_carries_every_key_the_issue_lists() -> None:
    levels = _levels()
    levels[0].pipeline = replace(levels[0].pipeline, idle_cpu_share={"worker": 0.05, "broker": 0.2})
    floor = {
        "embedding-scorer": [FloorPoint(1, 10, 5.0, 6.0, 5.0, 6.0), FloorPoint(8, 10, 8.0, 9.0, 1.0, 1.1)]
    }
    result = BenchResult(
        timestamp="t",
        wall_s=1.0,
        machine={},
        code={},
        worker={"delivery": "exactly_once", "max_batch": 64},
        levels=levels,
        floor=floor,
        peer_name="quixstreams 9.9",
    )
    settings = BenchSettings(loads_per_s=LOADS, systems=("pipeline", "echo_alo", "peer_alo"))
    document = json.loads(json.dumps(result.to_json(settings)))
    assert document["levels"][0]["pipeline"]["run"]["latency"]["p99_ms"] == 20
    assert document["levels"][0]["echo_eos"] is None
    ratios = document["ratios"]
    assert set(ratios["device_p99_ms"]) == set(ratios["device_p99_vs_echo_alo"]) == {"100", "1000", "2000"}
    assert ratios["sustained_vs_echo_alo"] == pytest.approx(0.5)
    assert document["cpu_ms_per_request"]["1000"] == {"worker": 0.25, "broker": 1.0, "fleet": 0.25}
    assert document["idle_cpu_share"] == {"worker": 0.05, "broker": 0.2}
    peer = document["peer"]
    assert peer["name"] == "quixstreams 9.9"
    assert {"items_per_s", "p99_ms", "items_per_s_ratio", "p99_ratio"} <= set(peer["at_least_once"])
    assert "exactly_once" in peer
    assert "gpu" in document
