"""OffsetTracker: commit positions never pass a record that is not finished."""

from __future__ import annotations

import random

import pytest

from edgestream.pipeline.offsets import OffsetTracker


def test_position_waits_for_the_lowest_unfinished_offset() -> None:
    t: OffsetTracker[int] = OffsetTracker()
    for off in (10, 11, 12):
        t.track(0, off)
    t.done(0, 11)
    t.done(0, 12)
    assert t.position(0) == 10
    assert t.in_flight == 1
    t.done(0, 10)
    assert t.position(0) == 13
    assert t.in_flight == 0


def test_committable_reports_only_advances() -> None:
    t: OffsetTracker[str] = OffsetTracker()
    t.track("p0", 0)
    t.track("p1", 5)
    t.done("p0", 0)
    first = t.committable()
    assert first == {"p0": 1, "p1": 5}
    t.mark_committed(first)
    assert t.committable() == {}
    t.done("p1", 5)
    assert t.committable() == {"p1": 6}


def test_random_completion_order_never_commits_past_an_unfinished_record() -> None:
    rng = random.Random(7)
    t: OffsetTracker[int] = OffsetTracker()
    offsets = list(range(100, 400))
    for off in offsets:
        t.track(3, off)
    order = offsets[:]
    rng.shuffle(order)
    finished: set[int] = set()
    for off in order:
        t.done(3, off)
        finished.add(off)
        pos = t.position(3)
        assert pos is not None
        assert all(o in finished for o in range(100, pos))
        assert pos == 400 or pos not in finished
    assert t.position(3) == 400


def test_forget_drops_revoked_partitions_and_their_in_flight_count() -> None:
    t: OffsetTracker[int] = OffsetTracker()
    t.track(0, 1)
    t.track(1, 1)
    t.track(1, 2)
    t.done(1, 2)
    assert t.in_flight_for([1]) == 1
    assert t.forget([1]) == 1
    assert t.in_flight == 1
    assert t.position(1) is None


def test_misuse_is_refused() -> None:
    t: OffsetTracker[int] = OffsetTracker()
    t.track(0, 5)
    with pytest.raises(ValueError, match="fetched after"):
        t.track(0, 5)
    with pytest.raises(ValueError, match="not in flight"):
        t.done(0, 4)
    t.track(0, 8)  # offsets 6 and 7 were transaction markers: never fetched
    with pytest.raises(ValueError, match="not in flight"):
        t.done(0, 7)
    t.done(0, 5)
    with pytest.raises(ValueError, match="not in flight"):
        t.done(0, 5)
    t.done(0, 8)
    assert t.position(0) == 9
