"""The simulated Kafka-native devices fall back inside their deadline, as the SDK's phones do."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from types import SimpleNamespace
from typing import Any

import numpy as np

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
