"""`LoopLag`: the largest recent lateness of the event loop's timers, and the fallback reserve it
grows (pure logic on a given clock)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgestream.device.looplag import LoopLag


def test_a_prompt_loop_keeps_the_fixed_reserve() -> None:
    lag = LoopLag(window_s=10.0, cap_s=0.1)
    lag.note(100.0, 100.0)
    lag.note(100.05, 100.049)  # early: not late
    assert lag.reserve_s(0.01, 100.1) == 0.01
    assert lag.samples == 0


def test_a_late_wake_grows_the_reserve_for_the_window_then_it_comes_back() -> None:
    lag = LoopLag(window_s=10.0, cap_s=0.1)
    lag.note(100.0, 100.04)
    assert lag.reserve_s(0.01, 100.1) == pytest.approx(0.05)
    assert lag.reserve_s(0.01, 108.0) == pytest.approx(0.05)
    assert lag.reserve_s(0.01, 111.0) == 0.01  # a whole window later
    assert lag.peak_s == pytest.approx(0.04)


def test_the_largest_lateness_in_the_window_counts_and_the_cap_holds() -> None:
    lag = LoopLag(window_s=10.0, cap_s=0.1)
    lag.note(100.0, 100.02)
    lag.note(103.0, 103.06)
    lag.note(105.0, 105.01)
    assert lag.recent_s(106.0) == pytest.approx(0.06)
    lag.note(106.0, 106.5)
    assert lag.reserve_s(0.01, 106.6) == pytest.approx(0.11)


def test_window_zero_is_the_fixed_reserve_only() -> None:
    lag = LoopLag(window_s=0.0)
    lag.note(1.0, 2.0)
    assert lag.reserve_s(0.01, 2.0) == 0.01


def test_a_clock_that_gives_nan_or_infinity_is_ignored() -> None:
    lag = LoopLag()
    lag.note(1.0, math.nan)
    lag.note(1.0, math.inf)
    assert (lag.recent_s(1.0), lag.samples) == (0.0, 0)


@given(
    st.lists(
        st.tuples(st.floats(0.0, 1000.0), st.floats(0.0, 0.5)),
        max_size=60,
    ),
    st.floats(0.0, 60.0),
)
def test_recent_is_the_largest_lateness_of_the_slices_inside_the_window(
    wakes: list[tuple[float, float]], after_s: float
) -> None:
    """Against a list that keeps every sample: the window is the last ``buckets`` slices."""
    lag = LoopLag(window_s=10.0, buckets=10, cap_s=1.0)
    woke = 0.0
    kept: list[tuple[float, float]] = []
    for step, late in sorted(wakes):
        woke = step
        lag.note(woke - late, woke)
        if late > 0:
            kept.append((woke, late))
    now = woke + after_s
    width = lag.window_s / lag.buckets
    inside = [late for at, late in kept if int(at // width) > int(now // width) - lag.buckets]
    assert lag.recent_s(now) == pytest.approx(max(inside, default=0.0))
