"""The device faults bench's figures (``bench/devicefaults/figures.py``) on hand-made calls."""

from __future__ import annotations

from bench.devicefaults.calls import Call
from bench.devicefaults.figures import answers, failover_s, first_edge_after, spread, started_in, timeline


def _call(
    device: str, t: float, source: str, region: str | None, latency_ms: float = 50.0, why: str = ""
) -> Call:
    return Call(device, t, source, region, why, latency_ms, b"")


CALLS = [
    _call("a", 0.0, "edge", "near"),
    _call("b", 0.5, "edge", "near"),
    _call("a", 1.0, "fallback", "near", 240.0, "deadline"),
    _call("b", 1.5, "fallback", None, 0.1, "unavailable"),
    _call("a", 2.0, "edge", "far", 300.0),
    _call("b", 2.5, "error", None, 1.0, "RuntimeError"),
    _call("b", 3.0, "edge", "far"),
]


def test_answers_counts_sources_reasons_and_late_answers() -> None:
    got = answers(CALLS, deadline_ms=250.0)
    assert (got["calls"], got["edge"], got["fallback"], got["lost"]) == (7, 4, 2, 1)
    assert got["fallback_share"] == round(2 / 7, 4)
    assert got["fallback_why"] == {"deadline": 1, "unavailable": 1}
    assert got["edge_regions"] == {"near": 2, "far": 2}
    assert got["past_deadline"] == 1  # the 300 ms edge answer; the error is not an answer
    assert answers([], 250.0)["fallback_share"] is None


def test_windows_and_the_first_edge_answer_after_a_moment() -> None:
    assert [c.started_s for c in started_in(CALLS, 1.0, 2.5)] == [1.0, 1.5, 2.0]
    assert first_edge_after(CALLS, "far", 1.0) == 2.3  # started at 2.0, answered 300 ms later
    assert first_edge_after(CALLS, "near", 1.0) is None


def test_failover_is_per_device_from_the_kill_to_its_first_answer_from_another_region() -> None:
    times = failover_s(CALLS, killed_s=0.8, killed_region="near")
    assert times == {"a": 1.5, "b": 2.25}
    assert failover_s(CALLS[:4], killed_s=0.8, killed_region="near") == {"a": None, "b": None}
    assert spread(times.values()) == {"p50": 1.875, "max": 2.25}
    assert spread([None]) == {"p50": None, "max": None}


def test_the_timeline_bins_answers_by_when_they_came() -> None:
    line = timeline(CALLS, bin_s=1.0)
    assert line["t_s"] == [0.0, 1.0, 2.0, 3.0]
    assert line["edge:near"] == [2, 0, 0, 0]
    assert line["fallback"] == [0, 2, 0, 0]
    assert line["edge:far"] == [0, 0, 1, 1]  # the error is no answer
