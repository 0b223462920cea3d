"""MicroBatcher: closes on size, on age, and early when an item's latency budget would be missed."""

from __future__ import annotations

import pytest

from edgestream.pipeline.serving.batching import MicroBatcher, ServiceTimeEstimate


def test_closes_when_full_and_the_next_item_opens_a_new_batch() -> None:
    b: MicroBatcher[int] = MicroBatcher(max_batch=3, max_wait_ms=1000)
    for i in range(3):
        b.add(i, now_s=0.0, deadline_s=10.0)
    b.add(99, now_s=0.0, deadline_s=10.0)
    ready = b.pop_ready(now_s=0.0)
    assert [(x.items, x.reason) for x in ready] == [([0, 1, 2], "full")]
    assert len(b) == 1


def test_closes_after_max_wait_from_first_item() -> None:
    b: MicroBatcher[int] = MicroBatcher(max_batch=100, max_wait_ms=5)
    b.add(1, now_s=1.000, deadline_s=100.0)
    b.add(2, now_s=1.004, deadline_s=100.0)
    assert b.pop_ready(now_s=1.0049) == []
    assert b.next_due_s() == pytest.approx(1.005)
    (batch,) = b.pop_ready(now_s=1.005)
    assert batch.items == [1, 2]
    assert batch.reason == "max_wait"
    assert len(b) == 0
    assert b.next_due_s() is None


def test_closes_early_for_the_tightest_deadline_minus_service_time() -> None:
    est = ServiceTimeEstimate(initial_s=0.010)
    b: MicroBatcher[str] = MicroBatcher(max_batch=100, max_wait_ms=50, service_time_s=est)
    b.add("relaxed", now_s=0.0, deadline_s=1.0)
    b.add("urgent", now_s=0.001, deadline_s=0.030)
    # Must start by 0.030 - 0.010 = 0.020, well before max_wait (0.050).
    assert b.close_at_s() == pytest.approx(0.020)
    assert b.pop_ready(now_s=0.019) == []
    (batch,) = b.pop_ready(now_s=0.020)
    assert batch.reason == "deadline"
    assert batch.items == ["relaxed", "urgent"]


def test_service_time_estimate_moves_toward_observations() -> None:
    est = ServiceTimeEstimate(initial_s=0.005, alpha=0.5)
    assert est() == 0.005
    est.observe(0.020)
    assert est() == pytest.approx(0.020)
    est.observe(0.010)
    assert est() == pytest.approx(0.015)


def test_an_already_late_item_closes_its_batch_at_once() -> None:
    b: MicroBatcher[int] = MicroBatcher(max_batch=100, max_wait_ms=50)
    b.add(1, now_s=5.0, deadline_s=4.0)
    (batch,) = b.pop_ready(now_s=5.0)
    assert batch.reason == "deadline"


def test_drain_returns_everything_oldest_first() -> None:
    b: MicroBatcher[int] = MicroBatcher(max_batch=2, max_wait_ms=1000)
    b.add(1, now_s=1.0, deadline_s=9.0)
    b.add(2, now_s=1.5, deadline_s=9.0)  # full
    b.add(3, now_s=2.0, deadline_s=9.0)
    drained = b.drain()
    assert [(x.items, x.reason) for x in drained] == [([1, 2], "full"), ([3], "drain")]
    assert len(b) == 0
    assert b.pop_ready(now_s=100.0) == []


def test_remove_takes_items_out_of_open_and_full_batches() -> None:
    b: MicroBatcher[int] = MicroBatcher(max_batch=3, max_wait_ms=1000)
    for i in range(1, 6):
        b.add(i, now_s=0.0, deadline_s=9.0)  # full: [1, 2, 3]; open: [4, 5]
    removed = b.remove(lambda x: x % 2 == 1)
    assert sorted(removed) == [1, 3, 5]
    assert len(b) == 2
    assert sorted(i for x in b.drain() for i in x.items) == [2, 4]


@pytest.mark.parametrize(("max_batch", "max_wait_ms"), [(0, 1.0), (1, -1.0)])
def test_rejects_bad_bounds(max_batch: int, max_wait_ms: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        MicroBatcher(max_batch=max_batch, max_wait_ms=max_wait_ms)
