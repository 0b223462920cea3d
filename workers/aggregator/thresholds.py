"""Drift thresholds for the aggregator, simulated off its event loop (in a process of their own) and
looked up on it.

A calibrated threshold (``pipeline/learning/calibration.py``) is a simulation of ~0.25 s of CPU per
(bins, grid n, m, source rows, level) key. The aggregator judges its windows inside faust's event loop
(the view and the flag-count timer), and simulating there stalled every agent for the whole simulation
(42% of its CPU samples 10-70 s into a demo, py-spy), the records meanwhile waiting.

`Thresholds` is a drop-in for ``calibration.threshold`` whose lookup never simulates: it answers from
the thresholds already simulated, or submits the key to its simulation process and raises
`ThresholdPending` (`judged` awaits the process, the loop running meanwhile, and computes the rows
again from the same counts: the view and the flag-count timer never see a pending window). The
process calls the same ``calibration.simulated_threshold`` with the same arguments (same seeds), so a
threshold and every decision made with it are those of the inline path, and it simulates exactly the
keys the inline path would have.

A process, not a thread: numpy's multinomial draws hold the GIL for tens of ms at a time, and a thread
simulating starved the loop (the GIL's convoy effect: each time the loop came back from a select it
waited for the GIL); in ``bench/aggregator`` the agents fell 10 s behind a 60 s replay and no window was
judged with enough samples to flag. Simulating ahead of need did not pay either: warming the fine grid
from 200 to 400 samples at both test counts when a reference loads (34 simulations), and the next grid
points after each one asked for, took 4x the CPU of the inline path in a 25 s replay at the demo's
rate, because a window is judged every 10 s and so at a few of the grid points it fills through.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import os
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


def simulate(key: Key) -> tuple[float, int]:
    """``calibration.simulated_threshold`` of ``key`` and the id of the process that simulated it;
    refuses to run on an event loop's thread."""
    if _on_event_loop():
        raise SimulationOnLoop("a drift threshold simulation was asked for on the event loop's thread")
    bins, n, m, source_rows, level, epsilon = key
    return calibration.simulated_threshold(bins, n, m, source_rows, level, epsilon), os.getpid()


class Thresholds:
    """``calibration.threshold`` from thresholds simulated in a process of their own (see the module)."""

    def __init__(self, executor: Callable[[], concurrent.futures.Executor] | None = None) -> None:
        self._make_executor = executor or _simulation_process
        """Makes the executor the simulations run in (on the first one): one spawned process."""
        self._executor: concurrent.futures.Executor | None = None
        self._futures: dict[Key, concurrent.futures.Future[tuple[float, int]]] = {}
        """Every key ever asked for -> (its threshold, the simulating process) once simulated."""
        self._demanded: set[Key] = set()
        """Keys a judgement asked for that may not be simulated yet."""
        self.simulated_in: set[int] = set()
        """Ids of the processes that simulated the thresholds looked up so far."""

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
        else submits it and raises `ThresholdPending` (a simulation that failed raises as inline)."""
        key: Key = (bins, grid_floor(n, fine_from), m, source_rows, level, epsilon)
        future = self._futures.get(key)
        if future is not None and future.done() and _lost(future):
            future = self._executor = None  # the process died (or was closed): a fresh one
        if future is not None and future.done():
            value, pid = future.result()
            self.simulated_in.add(pid)
            return value
        self._demanded.add(key)
        if future is None:
            if self._executor is None:
                self._executor = self._make_executor()
            self._futures[key] = self._executor.submit(simulate, key)
        raise ThresholdPending(f"drift threshold {key} is being simulated")

    @property
    def submitted(self) -> int:
        """How many thresholds were submitted for simulation."""
        return len(self._futures)

    def pending(self) -> list[concurrent.futures.Future[tuple[float, int]]]:
        """The thresholds a judgement asked for and not yet simulated."""
        waiting = [self._futures[k] for k in self._demanded]
        self._demanded = {k for k, f in zip(self._demanded, waiting, strict=True) if not f.done()}
        return [f for f in waiting if not f.done()]

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

    def close(self) -> None:
        """Stop the simulation process (what is pending is cancelled)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


def _lost(future: concurrent.futures.Future[tuple[float, int]]) -> bool:
    """Whether a finished simulation was cancelled or its process broke (not the simulation failing)."""
    return future.cancelled() or isinstance(future.exception(), concurrent.futures.BrokenExecutor)


def _simulation_process() -> concurrent.futures.Executor:
    """One spawned process (no fork of faust's threads) for the simulations."""
    return concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
