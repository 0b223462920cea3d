"""Drift thresholds for the aggregator, simulated off its event loop and looked up on it.

A calibrated threshold (``pipeline/learning/calibration.py``) is a simulation of ~0.25 s of CPU per
(bins, grid n, m, source rows, level) key. The aggregator judges its windows inside faust's event loop
(the view and the flag-count timer), and simulating there stalled every agent for the whole simulation:
about a third of its CPU in a demo's first minutes, the records meanwhile waiting.

`Thresholds` is a drop-in for ``calibration.threshold`` whose lookup never simulates: it answers from
the thresholds already simulated, or queues the key for its own thread and raises `ThresholdPending`
(the window is judged later: the flag-count timer judges it on its next tick, the view awaits it). The
thread calls the same ``calibration.simulated_threshold`` with the same arguments (same seeds), so a
threshold and every decision made with it are those of the inline path. Keys asked for (demand) go
before keys warmed ahead of need: when a reference is first judged, the fine grid from the fewest
samples that can flag a window up to ``warm_samples`` at both test counts (with and without the score
test); after each demand, the next grid points of the same key, since windows fill upwards.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, Final

from edgestream.pipeline.errors import EdgestreamError
from edgestream.pipeline.learning import calibration
from edgestream.pipeline.learning.calibration import grid_floor, held_bins, per_test_level
from edgestream.pipeline.learning.drift import EPSILON, MIN_SAMPLES, FeatureReference

log = logging.getLogger(__name__)

Key = tuple[int, int, int, int | None, float, float]
"""(bins, n on the grid, m, source rows, level, epsilon): the arguments of ``simulated_threshold``."""

DEMAND: Final = 0
"""Queue priority of a key a judgement is waiting for."""
AHEAD: Final = 1
"""Queue priority of a key simulated ahead of need (the next grid points of a demanded key)."""
WARM: Final = 2
"""Queue priority of a key warmed when a reference is first judged."""
LOOKAHEAD: Final = 2
"""Grid points above a demanded one queued ahead of need."""
WARM_SAMPLES: Final = 2 * MIN_SAMPLES
"""Largest window sample count whose feature thresholds are warmed per reference."""


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


def next_grid_points(n: int, fine_from: int, count: int) -> list[int]:
    """The ``count`` grid points (``calibration.grid_floor``) above the grid point ``n``."""
    out: list[int] = []
    probe = n
    while len(out) < count:
        probe += 1
        point = grid_floor(probe, fine_from)
        if point > (out[-1] if out else n):
            out.append(point)
    return out


class Thresholds:
    """``calibration.threshold`` from thresholds simulated on a thread of its own (see the module)."""

    def __init__(self, warm_samples: int = WARM_SAMPLES) -> None:
        self._warm_samples = warm_samples
        self._futures: dict[Key, concurrent.futures.Future[float]] = {}
        """Every key ever queued -> its threshold (done once simulated)."""
        self._queue: queue.PriorityQueue[tuple[int, int, Key | None]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._warmed: set[tuple[int, float, int | None, int]] = set()
        """(id of a reference, rate, source rows, fine_from) already warmed."""
        self._references: list[FeatureReference] = []
        """The references warmed (kept alive, so their ids stay theirs)."""
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
        else queues it (and the next grid points) and raises `ThresholdPending`."""
        key: Key = (bins, grid_floor(n, fine_from), m, source_rows, level, epsilon)
        future = self._futures.get(key)
        if future is not None and future.done():
            return future.result()
        self._demanded.add(key)
        self._queue_key(key, DEMAND)
        for point in next_grid_points(key[1], fine_from, LOOKAHEAD):
            self._queue_key((bins, point, m, source_rows, level, epsilon), AHEAD)
        raise ThresholdPending(f"drift threshold {key} is being simulated")

    def warm(
        self, reference: FeatureReference, rate: float, source_rows: int | None, fine_from: int = MIN_SAMPLES
    ) -> None:
        """Queue the feature thresholds of ``reference`` at window-level false-positive ``rate`` for
        windows of ``fine_from`` up to ``warm_samples`` samples, with and without a score test, unless
        done before."""
        mark = (id(reference), rate, source_rows, fine_from)
        if mark in self._warmed:
            return
        self._warmed.add(mark)
        self._references.append(reference)
        tests = reference.n_features
        levels = [per_test_level(rate, t) for t in (tests, tests + 1)]
        bins = sorted({held_bins(c) for c in reference.counts})
        points = [grid_floor(fine_from, fine_from)]
        while points[-1] < self._warm_samples:
            points.extend(next_grid_points(points[-1], fine_from, 1))
        for n in points:
            for level, b in itertools.product(levels, bins):
                self._queue_key((b, n, reference.samples, source_rows, level, EPSILON), WARM)

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

    def _queue_key(self, key: Key, priority: int) -> None:
        """Queue ``key`` unless queued before (a demand re-queues it first: its earlier, lower entry
        is skipped when reached)."""
        future = self._futures.get(key)
        if future is None:
            future = self._futures[key] = concurrent.futures.Future()
        elif future.done() or priority != DEMAND:
            return
        self._queue.put((priority, next(self._order), key))
        self._start()

    def close(self) -> None:
        """Stop the simulation thread once its current simulation ends (what is queued stays pending)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put((-1, next(self._order), None))
            thread.join()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="drift-thresholds", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        """The simulation thread: keys by priority, then in the order queued."""
        while True:
            _, _, key = self._queue.get()
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
