"""Devices calling at a steady rate with a deadline, every answer recorded.

A `Caller` starts one ``infer`` every ``1 / rate_per_s`` seconds as its own task (a slow answer does
not delay the next call) and records each answer as a `Call`: when it started (seconds on the run's
clock), who answered (the edge of which region, or the fallback and why), how long it took. A call
that raised is recorded too (``source="error"``): the SDK promises an answer for every call, so the
bench and the tests count those as lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy.typing as npt

    from edgestream.device.client import EdgeClient


@dataclass(frozen=True, slots=True)
class Call:
    """One ``infer`` and its answer."""

    device: str
    started_s: float
    """When the call started, seconds since the run's zero (``time.monotonic``)."""
    source: str
    """``edge``, ``fallback`` or ``error`` (the call raised: no answer)."""
    region: str | None
    """The region whose edge answered, or where the request went."""
    why: str
    """The fallback's reason (``deadline``, ``unavailable``, ...); the error's type for ``error``."""
    latency_ms: float
    request_id: bytes


@dataclass
class Caller:
    """One device calling steadily until stopped."""

    client: EdgeClient
    device: str
    xs: npt.NDArray[Any]
    """Inputs, used in turn."""
    rate_per_s: float
    deadline_ms: float
    zero_s: float
    """The run's zero on the monotonic clock."""
    calls: list[Call] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def run(self, stop: asyncio.Event) -> None:
        """Start a call every period until ``stop``; then wait for the calls under way."""
        period_s = 1.0 / self.rate_per_s
        next_s = time.monotonic()
        i = 0
        while not stop.is_set():
            task = asyncio.create_task(self._one(self.xs[i % len(self.xs)]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            i += 1
            next_s += period_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, next_s - time.monotonic()))
        if self._tasks:
            await asyncio.gather(*self._tasks)

    async def _one(self, x: npt.NDArray[Any]) -> None:
        started = time.monotonic()
        try:
            answer = await self.client.infer(x, self.deadline_ms, kind="embedding")
        except Exception as err:  # counted as lost: the SDK must answer every call
            latency_ms = (time.monotonic() - started) * 1000.0
            self.calls.append(
                Call(self.device, started - self.zero_s, "error", None, type(err).__name__, latency_ms, b"")
            )
            return
        self.calls.append(
            Call(
                self.device,
                started - self.zero_s,
                answer.source,
                answer.region,
                answer.why,
                answer.latency_ms,
                answer.request_id,
            )
        )
