"""DeviceRateLimiter: token bucket per device, refill, independence, bounded buckets, lossless eviction."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgestream.pipeline.errors import ContractError, RateLimited
from edgestream.pipeline.serving.ratelimit import DeviceRateLimiter


def accepted(limiter: DeviceRateLimiter, device_id: str, now_s: float, tries: int) -> int:
    count = 0
    for _ in range(tries):
        try:
            limiter.check(device_id, now_s)
            count += 1
        except RateLimited:
            pass
    return count


def test_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="rate_per_s"):
        DeviceRateLimiter(rate_per_s=0.0, burst=1, max_devices=1)
    with pytest.raises(ValueError, match="burst"):
        DeviceRateLimiter(rate_per_s=1.0, burst=0, max_devices=1)
    with pytest.raises(ValueError, match="max_devices"):
        DeviceRateLimiter(rate_per_s=1.0, burst=1, max_devices=0)


def test_a_burst_then_refusal() -> None:
    limiter = DeviceRateLimiter(rate_per_s=2.0, burst=5, max_devices=10)
    for _ in range(5):
        limiter.check("dev-a", 100.0)
    with pytest.raises(RateLimited) as info:
        limiter.check("dev-a", 100.0)
    err = info.value
    assert isinstance(err, ContractError)
    assert (err.reason, err.stage, err.device_id) == ("rate_limited", "validate", "dev-a")
    assert str(err) == "device 'dev-a' exceeds 2 requests/s (burst 5)"


def test_refill_over_time_capped_at_burst() -> None:
    limiter = DeviceRateLimiter(rate_per_s=4.0, burst=3, max_devices=10)
    assert accepted(limiter, "d", 0.0, 10) == 3
    assert accepted(limiter, "d", 0.24, 10) == 0  # 0.96 tokens
    assert accepted(limiter, "d", 0.25, 10) == 1  # refused tries took nothing
    assert accepted(limiter, "d", 0.75, 10) == 2
    assert accepted(limiter, "d", 1_000.0, 10) == 3  # never more than the burst


def test_sustained_rate_is_the_refill_rate() -> None:
    limiter = DeviceRateLimiter(rate_per_s=10.0, burst=5, max_devices=10)
    total = sum(accepted(limiter, "d", step / 100, 1) for step in range(1_000))  # 100 tries/s for 10 s
    assert total == 5 + 99  # the burst, then 10/s over the 9.99 s after the first try


def test_devices_are_independent() -> None:
    limiter = DeviceRateLimiter(rate_per_s=1.0, burst=2, max_devices=10)
    assert accepted(limiter, "a", 0.0, 5) == 2
    assert accepted(limiter, "b", 0.0, 5) == 2
    assert accepted(limiter, "a", 0.0, 5) == 0


def test_the_bucket_bound_holds_and_only_unrefilled_evictions_are_lossy() -> None:
    limiter = DeviceRateLimiter(rate_per_s=1.0, burst=2, max_devices=100)
    for n in range(1_000):
        limiter.check(f"dev-{n}", 0.0)
        assert len(limiter) <= 100
    assert len(limiter) == 100
    assert limiter.lossy_evictions == 900  # each had 1 token of 2 left when evicted
    for n in range(1_000, 1_100):  # 1 s later every bucket left has refilled
        limiter.check(f"dev-{n}", 1.0)
    assert limiter.lossy_evictions == 900


def test_an_evicted_idle_device_behaves_as_new() -> None:
    limiter = DeviceRateLimiter(rate_per_s=1.0, burst=3, max_devices=2)
    fresh = DeviceRateLimiter(rate_per_s=1.0, burst=3, max_devices=2)
    assert accepted(limiter, "a", 0.0, 5) == 3
    limiter.check("b", 1.0)
    limiter.check("c", 5.0)  # evicts "a", idle for 5 s: refilled, nothing lost
    assert len(limiter) == 2
    assert limiter.lossy_evictions == 0
    assert accepted(limiter, "a", 5.0, 5) == accepted(fresh, "a", 5.0, 5) == 3


def test_a_device_that_keeps_sending_is_not_evicted() -> None:
    limiter = DeviceRateLimiter(rate_per_s=1.0, burst=2, max_devices=2)
    assert accepted(limiter, "flood", 0.0, 2) == 2
    limiter.check("b", 0.0)
    assert accepted(limiter, "flood", 0.5, 10) == 0  # refused tries count as use
    limiter.check("c", 0.5)  # evicts "b", the least recently used
    assert accepted(limiter, "flood", 0.5, 10) == 0  # its debt was kept
    assert limiter.lossy_evictions == 1


@given(
    gaps_s=st.lists(st.floats(0.0, 0.5, allow_nan=False), min_size=1, max_size=200),
    rate_per_s=st.floats(0.5, 50.0),
    burst=st.integers(1, 10),
)
def test_never_more_than_burst_plus_rate_times_elapsed(
    gaps_s: list[float], rate_per_s: float, burst: int
) -> None:
    limiter = DeviceRateLimiter(rate_per_s=rate_per_s, burst=burst, max_devices=1)
    now_s = 0.0
    accepted_at: list[float] = []
    for gap_s in gaps_s:
        now_s += gap_s
        accepted_at.extend([now_s] * accepted(limiter, "d", now_s, 1))
    for i, start_s in enumerate(accepted_at):
        for j in range(i, len(accepted_at)):
            assert j - i + 1 <= burst + rate_per_s * (accepted_at[j] - start_s) + 1e-9
