"""Drift thresholds for the aggregator, simulated off its event loop and looked up on it.

A calibrated threshold (``pipeline/learning/calibration.py``) is a simulation of ~0.25 s of CPU per
(bins, grid n, m, source rows, level) key. The aggregator judges its windows inside faust's event loop
(the view and the flag-count timer), and simulating there stalled every agent for the whole simulation
(42% of its CPU samples 10-70 s into a demo, py-spy), the records meanwhile waiting.

`Thresholds` is a drop-in for ``calibration.threshold`` whose lookup never simulates: it answers from
the thresholds already simulated, or queues the key for its own thread and raises `ThresholdPending`
(`judged` awaits the thread, the loop running meanwhile, and computes the rows again from the same
counts: the view and the flag-count timer never see a pending window). The thread calls the same
``calibration.simulated_threshold`` with the same arguments (same seeds), so a threshold and every
decision made with it are those of the inline path, and the thread simulates exactly the keys the
inline path would have (no more CPU in all; ``bench/aggregator``).

Simulating ahead of need did not pay: warming the fine grid from 200 to 400 samples at both test
counts when a reference loads (34 simulations), and the next grid points after each one asked for,
took 4x the CPU of the inline path in a 25 s replay at the demo's rate, because a window is judged
every 10 s and so at a few of the grid points it fills through, not at each.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from edgestream.pipeline.errors import EdgestreamError
from edgestream.pipeline.learning import calibration
from edgestream.pipeline.learning.calibration import grid_floor

log = logging.getLogger(__name__)

Key = tuple[int, int, int, int | None, float, float]
"""(bins, n on the grid, m, source rows, level, epsilon): the arguments of ``simulated_threshold``."""


class ThresholdPending(EdgestreamError):
    """A threshold a judgement needs is not simulated yet (queued for the simulation thread)."""

    reason = "threshold_pending"


class SimulationOnLoop(EdgestreamError, RuntimeError):
    """A threshold simulation was about to run on a thread that runs an asyncio event loop."""

    reason = "simulation_on_loop"


def _on_event_loop() -> bool:
    """Whether this thread is running an asyncio event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def simulate(key: Key) -> float:
    """``calibration.simulated_threshold`` of ``key``; refuses to run on an event loop's thread."""
    if _on_event_loop():
        raise SimulationOnLoop("a drift threshold simulation was asked for on the event loop's thread")
    bins, n, m, source_rows, level, epsilon = key
    return calibration.simulated_threshold(bins, n, m, source_rows, level, epsilon)


class Thresholds:
    """``calibration.threshold`` from thresholds simulated on a thread of its own (see the module)."""

    def __init__(self) -> None:
        self._futures: dict[Key, concurrent.futures.Future[float]] = {}
        """Every key ever queued -> its threshold (done once simulated)."""
        self._keys: queue.SimpleQueue[Key | None] = queue.SimpleQueue()
        """Keys for the thread, in the order asked (None: stop)."""
        self._demanded: set[Key] = set()
        """Keys a judgement asked for that may not be simulated yet."""
        self._thread: threading.Thread | None = None

    def __call__(
        self,
        bins: int,
        n: int,
        m: int,
        level: float,
        epsilon: float,
        source_rows: int | None = None,
        fine_from: int = 0,
    ) -> float:
        """The threshold ``calibration.threshold`` gives for these arguments, if already simulated;
        else queues it and raises `ThresholdPending`."""
        key: Key = (bins, grid_floor(n, fine_from), m, source_rows, level, epsilon)
        future = self._futures.get(key)
        if future is not None and future.done():
            return future.result()
        self._demanded.add(key)
        self._queue(key)
        raise ThresholdPending(f"drift threshold {key} is being simulated")

    def pending(self) -> list[concurrent.futures.Future[float]]:
        """The thresholds a judgement asked for and not yet simulated."""
        waiting = [self._futures[k] for k in self._demanded]
        self._demanded = {k for k, f in zip(self._demanded, waiting, strict=True) if not f.done()}
        return [f for f in waiting if not f.done()]

    def idle(self) -> bool:
        """Whether every threshold queued so far is simulated."""
        return all(f.done() for f in list(self._futures.values()))

    async def judged(self, rows: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """``rows()`` once no row's drift is pending: awaits (the loop runs meanwhile) the thresholds
        they wait for, then computes them again."""
        while True:
            out = rows()
            if not any(row["drift"].get("pending") for row in out):
                return out
            waiting = [asyncio.wrap_future(f) for f in self.pending()]
            if waiting:
                await asyncio.wait(waiting)

    def _queue(self, key: Key) -> None:
        """Queue ``key`` for the thread unless queued before."""
        if key not in self._futures:
            self._futures[key] = concurrent.futures.Future()
            self._keys.put(key)
            self._start()

    def close(self) -> None:
        """Stop the simulation thread once its current simulation ends (what is queued stays pending)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._keys.put(None)
            thread.join()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="drift-thresholds", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        """The simulation thread: keys in the order asked."""
        while True:
            key = self._keys.get()
            if key is None:
                return
            future = self._futures[key]
            if future.done():
                continue
            try:
                value = simulate(key)
            except Exception as e:  # the lookup raises it, as the inline simulation would have
                future.set_exception(e)
                log.warning("drift threshold %s failed: %s", key, e)
            else:
                future.set_result(value)
