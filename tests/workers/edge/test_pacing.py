"""Fetch pacing's rule (pure logic, the clock passed in): paced only while an interval would fill."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgestream.workers.edge.pacing import MIN_RECORDS_PER_INTERVAL, RATE_WINDOW_S, FetchPacing


def _steady(pacing: FetchPacing, rate_per_s: float, seconds: float, start_s: float = 0.0) -> float:
    """Fetches one record per arrival at ``rate_per_s`` for ``seconds``; returns the clock after."""
    step_s = 1.0 / rate_per_s
    now_s = start_s
    while now_s < start_s + seconds:
        pacing.fetched(1, now_s)
        now_s += step_s
    return now_s


def test_fast_arrivals_wait_out_the_interval_after_a_fetch() -> None:
    pacing = FetchPacing(5.0)
    now_s = _steady(pacing, 1000.0, 0.3)  # 5 records an interval
    assert pacing.pacing
    pacing.fetched(3, now_s)
    assert pacing.wait_s(now_s) == pytest.approx(0.005)
    assert pacing.wait_s(now_s + 0.002) == pytest.approx(0.003)
    assert pacing.wait_s(now_s + 0.006) == 0.0


def test_slow_arrivals_fetch_at_once() -> None:
    pacing = FetchPacing(5.0)
    now_s = _steady(pacing, 300.0, 0.3)  # 1.5 records an interval: each fetch brings one anyway
    assert not pacing.pacing
    pacing.fetched(1, now_s)
    assert pacing.wait_s(now_s) == 0.0


def test_an_idle_spell_ends_pacing_and_empty_fetches_never_wait() -> None:
    pacing = FetchPacing(5.0)
    now_s = _steady(pacing, 2000.0, 0.3)
    paced_under_load = pacing.pacing
    for _ in range(3):  # empty fetches (getmany's timeout) as the traffic stops
        now_s += 0.1
        pacing.fetched(0, now_s)
    assert paced_under_load
    assert not pacing.pacing
    assert pacing.wait_s(now_s) == 0.0


def test_below_the_rate_floor_a_long_interval_does_not_pace() -> None:
    """300 req/s would put 4.5 records in a 15 ms interval, but it is under the 400/s floor: fetched at
    once; 1,000 req/s is over it: paced, and the wait is the whole interval."""
    light = FetchPacing(15.0, from_per_s=400.0)
    now_s = _steady(light, 300.0, 0.3)
    light.fetched(1, now_s)
    assert not light.pacing
    assert light.wait_s(now_s) == 0.0
    heavy = FetchPacing(15.0, from_per_s=400.0)
    now_s = _steady(heavy, 1000.0, 0.3)
    heavy.fetched(4, now_s)
    assert heavy.pacing
    assert heavy.wait_s(now_s) == pytest.approx(0.015)


def test_zero_interval_never_waits() -> None:
    pacing = FetchPacing(0.0)
    now_s = _steady(pacing, 5000.0, 0.3)
    assert not pacing.pacing
    assert pacing.wait_s(now_s) == 0.0


def test_a_negative_interval_or_rate_floor_is_refused() -> None:
    with pytest.raises(ValueError, match="interval_ms"):
        FetchPacing(-1.0)
    with pytest.raises(ValueError, match="from_per_s"):
        FetchPacing(5.0, from_per_s=-1.0)


@given(
    interval_ms=st.floats(min_value=0.5, max_value=50.0),
    rate_per_s=st.floats(min_value=10.0, max_value=10_000.0),
    from_per_s=st.sampled_from([0.0, 400.0, 2_000.0]),
)
def test_pacing_follows_the_rate_over_a_window(
    interval_ms: float, rate_per_s: float, from_per_s: float
) -> None:
    """Paced exactly when the measured rate reaches the floor and fills an interval with enough
    records, and a wait never exceeds the interval."""
    pacing = FetchPacing(interval_ms, from_per_s)
    now_s = _steady(pacing, rate_per_s, 3 * RATE_WINDOW_S)
    expected = (
        pacing.rate_per_s >= from_per_s
        and pacing.rate_per_s * interval_ms / 1000.0 >= MIN_RECORDS_PER_INTERVAL
    )
    assert pacing.pacing is expected
    assert pacing.rate_per_s == pytest.approx(rate_per_s, rel=0.1, abs=15.0)
    pacing.fetched(1, now_s)
    assert 0.0 <= pacing.wait_s(now_s) <= interval_ms / 1000.0 + 1e-12


@pytest.mark.parametrize(
    ("rate_per_s", "interval_s"),
    [
        (600.0, 0.020),  # 15 records would take 25 ms: capped at the longest interval
        (1_000.0, 0.015),  # 15 records in 15 ms
        (2_000.0, 0.0075),
        (8_000.0, 0.005),  # 15 records in under 2 ms: never below the least interval
    ],
)
def test_a_target_stretches_the_interval_to_carry_that_many_records(
    rate_per_s: float, interval_s: float
) -> None:
    pacing = FetchPacing(5.0, target_records=15.0, max_interval_ms=20.0)
    now_s = _steady(pacing, rate_per_s, 3 * RATE_WINDOW_S)
    pacing.fetched(4, now_s)
    assert pacing.pacing
    assert pacing.interval_now_s == pytest.approx(interval_s, rel=0.1)
    assert pacing.wait_s(now_s) == pytest.approx(pacing.interval_now_s)


def test_without_a_target_the_interval_is_fixed_whatever_the_rate() -> None:
    pacing = FetchPacing(5.0, max_interval_ms=20.0)
    _steady(pacing, 1_000.0, 3 * RATE_WINDOW_S)
    assert pacing.interval_now_s == pytest.approx(0.005)


def test_a_negative_target_or_a_longest_interval_under_the_least_is_refused() -> None:
    with pytest.raises(ValueError, match="target_records"):
        FetchPacing(5.0, target_records=-1.0)
    with pytest.raises(ValueError, match="max_interval_ms"):
        FetchPacing(5.0, max_interval_ms=4.0)
