"""One run of faults against devices: devices calling steadily through a `DeviceStack`, the faults
injected (a region's worker stopped and started again, a region's gateway killed), each marked on the
run's clock, and the waits that tell when the edge answers again. The bench and the tests drive the
same steps; ``figures.py`` turns the recorded calls into numbers."""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from bench.devicefaults.calls import Call, Caller
from bench.faults.env import wait_for
from edgestream.pipeline.models import load_dataset

if TYPE_CHECKING:
    from bench.devicefaults.stack import DeviceStack, Region
    from edgestream.device.answers import ClientSettings

LATENESS_PROBE_S: Final = 0.05
"""How often the event loop's lateness is sampled (a sleep of this long, how late it woke)."""
EDGE_BACK_TIMEOUT_S: Final = 120.0
"""The edge answers again within this after a restart or a failover (a bound for a crowded machine: the
runs so far took 2-8 s)."""


@dataclass(frozen=True, slots=True)
class Mark:
    """Something the run did, on its clock."""

    t_s: float
    what: str


class FaultRun:
    """Devices calling through ``stack``; faults and their marks."""

    def __init__(self, stack: DeviceStack) -> None:
        self.stack = stack
        self.zero_s = time.monotonic()
        self.marks: list[Mark] = []
        self.callers: list[Caller] = []
        self._stop = asyncio.Event()
        self._running: list[asyncio.Task[None]] = []
        self.lateness: list[tuple[float, float]] = []
        """(when, ms late) of each wake-up of the lateness probe: what a busy machine adds to any
        deadline in the devices' process, side by side with their answers."""

    def now_s(self) -> float:
        return time.monotonic() - self.zero_s

    def mark(self, what: str) -> float:
        t_s = self.now_s()
        self.marks.append(Mark(t_s, what))
        self.stack.env.on_event(f"{t_s:6.1f} s  {what}")
        return t_s

    async def start_devices(
        self, device_ids: list[str], settings: ClientSettings, *, rate_per_s: float, deadline_ms: float
    ) -> None:
        """Start each device (catalogue and fallback model through its nearest gateway), then its calls."""
        xs = load_dataset("embedding").X_test[:64]
        for device_id in device_ids:
            client = self.stack.client(device_id, settings)
            await client.start()
            self.callers.append(Caller(client, device_id, xs, rate_per_s, deadline_ms, self.zero_s))
        self.mark("devices calling")
        self._running = [asyncio.create_task(c.run(self._stop)) for c in self.callers]
        self._running.append(asyncio.create_task(self._probe()))

    async def _probe(self) -> None:
        while not self._stop.is_set():
            before = time.monotonic()
            await asyncio.sleep(LATENESS_PROBE_S)
            woke = time.monotonic()
            self.lateness.append((woke - self.zero_s, (woke - before - LATENESS_PROBE_S) * 1000.0))

    def calls(self) -> list[Call]:
        """Every call recorded so far, in start order."""
        return sorted((c for caller in self.callers for c in caller.calls), key=lambda c: c.started_s)

    def edge_since(self, region: str, since_s: float) -> set[str]:
        """Devices answered by ``region``'s edge on a call started at or after ``since_s``."""
        return {
            c.device
            for c in self.calls()
            if c.source == "edge" and c.region == region and c.started_s >= since_s
        }

    async def wait_edge(self, region: str, since_s: float, *, every_device: bool) -> float:
        """Wait until ``region``'s edge answered a call started since ``since_s`` (of every device when
        ``every_device``); the seconds waited."""
        want = {c.device for c in self.callers} if every_device else None

        def done() -> bool:
            answered = self.edge_since(region, since_s)
            return answered >= want if want is not None else bool(answered)

        return await wait_for(f"the edge of {region} answers", done, EDGE_BACK_TIMEOUT_S, 0.05)

    async def wait_fallbacks(self, since_s: float, count: int) -> float:
        """Wait until ``count`` calls started since ``since_s`` were answered by the fallback; the
        seconds waited."""

        def done() -> bool:
            return sum(c.source == "fallback" and c.started_s >= since_s for c in self.calls()) >= count

        return await wait_for(f"{count} fallback answers", done, EDGE_BACK_TIMEOUT_S, 0.05)

    async def stop_worker(self, region: Region, sig: signal.Signals) -> tuple[float, float]:
        """Stop ``region``'s worker with ``sig`` and wait for it to exit; when it was signalled and
        when it exited."""
        signalled = self.mark(f"worker {sig.name}")
        region.worker.stopping = True
        region.worker.signal(sig)
        code = await region.worker.wait_exit(30)
        if code is None:
            raise AssertionError(f"worker {region.worker.node_id} still runs 30 s after {sig.name}")
        return signalled, self.mark(f"worker exited ({code})")

    async def restart_worker(self, region: Region) -> tuple[float, float]:
        """Start ``region``'s worker again; when it was started and when it was ready."""
        started = self.mark("worker started again")
        region.worker.start()
        await region.worker.ready()
        return started, self.mark("worker ready")

    def kill_gateway(self, region: Region) -> float:
        """SIGKILL ``region``'s gateway; when."""
        killed = self.now_s()
        region.gateway.kill9()
        self.marks.append(Mark(killed, "gateway SIGKILL"))
        self.stack.env.on_event(f"{killed:6.1f} s  gateway SIGKILL")
        return killed

    async def finish(self) -> list[Call]:
        """Stop calling, wait for the calls under way; every call."""
        self._stop.set()
        await asyncio.gather(*self._running)
        self.mark("devices stopped")
        return self.calls()

    def duplicates(self) -> int:
        """Duplicate reply copies the devices received and dropped (the first copy answered)."""
        return sum(c.client.stats.duplicates for c in self.callers)

    def reconciled(self) -> int:
        """Late edge answers matched to a fallback answer already given."""
        return sum(c.client.stats.agreed + c.client.stats.disagreed for c in self.callers)

    def failovers(self) -> int:
        """Times devices moved to another region."""
        return sum(c.client.sessions.failovers for c in self.callers)
