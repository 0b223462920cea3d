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

A process, not a thread: a thread shares the GIL with the loop. In ``bench/aggregator``'s last round
(``bench/results/aggregator.json``) the loop's worst stall was 29 ms with the process, 43 ms with a
thread (before: 1,216 ms), p99 3.0 vs 6.6 ms; the process costs a spawn (~1 s of CPU, once).
Simulating ahead of need did not pay: warming the fine grid from 200 to 400 samples at both test
counts when a reference loads (34 simulations), and the next two grid points after each one asked
for, ran 61 simulations where the inline path ran 14 in a 25 s replay at the demo's rate: a window is
judged every 10 s, so at a few of the grid points it fills through, not at each.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import os
from collections.abc import Callable
from typing import Any

from edgestream.pipeline.errors import EdgestreamError
from edgestream.pipeline.learning import calibration
from edgestream.pipeline.learning.calibration import grid_floor

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
    """``calibration.threshold`` from thresholds simulated in a process of their own (see the module).

    One simulation at a time, of the keys some judgement (`judged`) still waits for, in the order first
    asked; a judgement that gives up or is cancelled withdraws its keys. `peek` asks for nothing: the
    view peeks, so a client polling it while windows grow (each poll at new sample counts) queues no
    simulations ahead of the flag-count timer's (in a demo, one of that timer's ticks waited 45 s
    behind the story's polls)."""

    def __init__(self, executor: Callable[[], concurrent.futures.Executor] | None = None) -> None:
        self._make_executor = executor or _simulation_process
        """Makes the executor the simulations run in (on the first one): one spawned process."""
        self._executor: concurrent.futures.Executor | None = None
        self._futures: dict[Key, concurrent.futures.Future[tuple[float, int]]] = {}
        """Every key submitted -> (its threshold, the simulating process) once simulated."""
        self._wanted: dict[Key, int] = {}
        """Keys not yet submitted -> how many judgements wait for them (in the order first asked)."""
        self._running: concurrent.futures.Future[tuple[float, int]] | None = None
        self._asked: list[Key] = []
        """Keys the current ``rows()`` found missing."""
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
        else notes the key for `judged` and raises `ThresholdPending` (a simulation that failed raises
        as inline)."""
        key: Key = (bins, grid_floor(n, fine_from), m, source_rows, level, epsilon)
        future = self._futures.get(key)
        if future is not None and future.done() and _lost(future):
            del self._futures[key]  # the process died (or was closed): simulated again
            future = self._executor = None
        if future is not None and future.done():
            value, pid = future.result()
            self.simulated_in.add(pid)
            return value
        self._asked.append(key)
        raise ThresholdPending(f"drift threshold {key} is being simulated")

    @property
    def submitted(self) -> int:
        """How many thresholds were submitted for simulation."""
        return len(self._futures)

    def peek(self, rows: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """``rows()`` with the thresholds already simulated (the others pending), asking for none."""
        self._asked = []
        return rows()

    async def judged(
        self, rows: Callable[[], list[dict[str, Any]]], give_up_s: float | None = None
    ) -> list[dict[str, Any]]:
        """``rows()`` once no row's drift is pending: waits (the loop runs meanwhile) for the thresholds
        they need, then computes them again; past ``give_up_s``, the rows as they are (pending ones
        included: not flagged) and its keys withdrawn."""
        loop = asyncio.get_running_loop()
        deadline = None if give_up_s is None else loop.time() + give_up_s
        mine: set[Key] = set()
        try:
            while True:
                self._asked = []
                out = rows()
                if not self._asked:
                    return out
                for key in self._asked:  # in the order asked
                    if key in mine:
                        continue
                    mine.add(key)
                    if key not in self._futures:
                        self._wanted[key] = self._wanted.get(key, 0) + 1
                self._submit_next()
                if not await self._one_finished(None if deadline is None else deadline - loop.time()):
                    return out  # given up
        finally:
            self._withdraw(mine)

    async def _one_finished(self, within_s: float | None) -> bool:
        """Wait until the running simulation ends (False: ``within_s`` passed first)."""
        running = self._running
        if running is None or running.done():
            return True
        if within_s is not None and within_s <= 0:
            return False
        done, _ = await asyncio.wait({asyncio.wrap_future(running)}, timeout=within_s)
        return bool(done)

    def _withdraw(self, keys: set[Key]) -> None:
        """A judgement no longer waits for ``keys``."""
        for key in keys:
            if key in self._wanted:
                self._wanted[key] -= 1
                if self._wanted[key] <= 0:
                    del self._wanted[key]

    def _submit_next(self) -> None:
        """Submit the first key still waited for, unless a simulation is running."""
        if (self._running is not None and not self._running.done()) or not self._wanted:
            return
        key = next(iter(self._wanted))
        del self._wanted[key]
        if self._executor is None:
            self._executor = self._make_executor()
        self._futures[key] = self._running = self._executor.submit(simulate, key)

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
