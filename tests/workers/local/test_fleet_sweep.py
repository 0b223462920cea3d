"""The simulated Kafka-native devices fall back inside their deadline, as the SDK's phones do."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from types import SimpleNamespace
from typing import Any

import numpy as np

from edgestream.device.looplag import LoopLag
from edgestream.workers.local.fleet import Fleet, _Pending
from edgestream.workers.local.fleet_settings import FleetSettings


async def test_each_request_falls_back_a_reserve_before_its_deadline_in_capture_order() -> None:
    reserve_ms = 50.0  # wide: a loaded CI box may wake the loop late by a few ms
    start_s = time.monotonic()
    deadlines = {b"a": start_s + 0.10, b"b": start_s + 0.12, b"c": start_s + 0.30}
    pending: OrderedDict[bytes, _Pending] = OrderedDict(
        (rid, _Pending("eu", "embedding", 0, 0, d, np.zeros(2), "original")) for rid, d in deadlines.items()
    )
    fell: list[tuple[float, float]] = []  # (when, its deadline)
    fake: Any = SimpleNamespace(
        settings=FleetSettings(fallback_reserve_ms=reserve_ms),
        loop_lag=LoopLag(window_s=0.0),  # the fixed reserve only
        _pending=pending,
        _expired={},
        _fallback_answer=lambda p: fell.append((time.monotonic(), p.deadline_s)),
    )
    sweep = asyncio.create_task(Fleet._sweep(fake))
    await asyncio.sleep(0.2)
    assert [d for _, d in fell] == [deadlines[b"a"], deadlines[b"b"]]  # c is not due yet
    await asyncio.sleep(0.2)
    sweep.cancel()
    assert [d for _, d in fell] == list(deadlines.values())
    for when, deadline in fell:
        assert deadline - reserve_ms / 1000.0 <= when < deadline  # in time, and not before the reserve
    assert set(fake._expired) == set(deadlines)  # kept for a late answer's accounting
    assert not pending


async def test_after_the_loop_woke_late_the_reserve_grows_by_that_lateness() -> None:
    """The fleet's loop woke 60 ms late a moment ago: the next fallback starts about 70 ms (not the
    fixed 10) before its deadline, and the sweep goes on noting its own wakes."""
    start_s = time.monotonic()
    lag = LoopLag(window_s=10.0, cap_s=0.1)
    lag.note(start_s - 0.06, start_s)
    deadline_s = start_s + 0.2
    pending: OrderedDict[bytes, _Pending] = OrderedDict(
        [(b"a", _Pending("eu", "embedding", 0, 0, deadline_s, np.zeros(2), "original"))]
    )
    fell: list[float] = []
    fake: Any = SimpleNamespace(
        settings=FleetSettings(fallback_reserve_ms=10.0),
        loop_lag=lag,
        _pending=pending,
        _expired={},
        _fallback_answer=lambda p: fell.append(time.monotonic()),
    )
    sweep = asyncio.create_task(Fleet._sweep(fake))
    await asyncio.sleep(0.25)
    sweep.cancel()
    assert len(fell) == 1
    assert fell[0] < deadline_s - 0.05  # the fixed reserve alone: about deadline_s - 0.01
    assert lag.samples >= 1
