"""The aggregator's drift thresholds off its event loop (``workers/aggregator/thresholds.py``): the same
thresholds and the same decisions as the inline simulation, and never a simulation on the loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from edgestream.pipeline.contract.cloud import PartialSummary
from edgestream.pipeline.learning import calibration
from edgestream.pipeline.learning.drift import EPSILON, MIN_SAMPLES, training_reference
from edgestream.pipeline.models import load_dataset
from edgestream.pipeline.models.shift import shifted_pools
from edgestream.workers.aggregator import windows as w
from edgestream.workers.aggregator.thresholds import (
    SimulationOnLoop,
    ThresholdPending,
    Thresholds,
    simulate,
)
from edgestream.workers.aggregator.view import frozen_summaries, joined_rows, window_rows

SOURCE_ROWS = 143
"""The demo's held-out rows, which its devices replay."""
WINDOW_MS = 15_000
SIMULATED = calibration.simulated_threshold
"""The cached simulation (a test may replace the module's name with a watcher)."""


@pytest.fixture(autouse=True)
def few_draws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fewer simulated windows per threshold (both paths read the same constants), in a cache of the
    test's own: a threshold of fewer draws never reaches another test."""
    monkeypatch.setattr(calibration, "SIMULATED_DRAWS", 2_000)
    monkeypatch.setattr(calibration, "MOST_DRAWS", 2_000)
    SIMULATED.cache_clear()
    yield
    SIMULATED.cache_clear()


@pytest.fixture
def thresholds() -> Iterator[Thresholds]:
    """Simulating on a thread (the few draws above reach it; the app's process would not see them)."""
    made = Thresholds(lambda: ThreadPoolExecutor(1, thread_name_prefix="drift-thresholds"))
    yield made
    made.close()
    SIMULATED.cache_clear()  # what the thread simulated meanwhile


def _windows() -> tuple[dict[str, w.State], list[tuple[str, w.State]]]:
    """Summary and quality windows of one series as the demo fills them: unshifted inputs, then shifted
    ones, of sizes below and above the fewest that can flag, with top-score histograms."""
    reference = training_reference("embedding")
    rng = np.random.default_rng(7)
    held_out = load_dataset("embedding").X_test
    shifted = shifted_pools()[0].X
    plan = [(held_out, 120), (held_out, 260), (held_out, 390), (shifted, 230), (shifted, 380)]
    summaries: dict[str, w.State] = {}
    quality: list[tuple[str, w.State]] = []
    for i, (pool, n) in enumerate(plan):
        start = i * WINDOW_MS
        key = w.window_key("eu", "embedding-scorer", 1, start)
        X = pool[rng.integers(0, len(pool), n)]
        state = w.new_quality()
        state["samples"] = n
        state["features"] = reference.window_counts(X)
        quality.append((w.quality_key(0, key), state))
        summary = PartialSummary("eu", "n", "embedding-scorer", 1, start)
        for score in rng.beta(8 - 3 * (pool is shifted), 2, n):
            summary.add_result(0, float(score), 5.0)
        window = w.new_window("eu", "embedding-scorer", 1, start, WINDOW_MS)
        w.add_summary(window, summary)
        summaries[key] = window
    return summaries, quality


def _judged(thresholds: Thresholds, summaries: dict[str, w.State], quality: Any) -> list[dict[str, Any]]:
    """The rows as the app judges them: the thresholds simulated off the loop, awaited on it."""
    joined = w.sum_quality(quality)

    def rows() -> list[dict[str, Any]]:
        return joined_rows(summaries, joined, source_rows=SOURCE_ROWS, thresholds=thresholds)

    return asyncio.run(thresholds.judged(rows))


def _simulate(made: Thresholds, *keys: Any) -> None:
    """Wait until ``keys`` are simulated (a judgement asking for them, as the app's do)."""

    def rows() -> list[dict[str, Any]]:
        for key in keys:
            with contextlib.suppress(ThresholdPending):
                made(*key)
        return []

    asyncio.run(made.judged(rows))


def test_a_lookup_is_the_inline_threshold(thresholds: Thresholds) -> None:
    level = calibration.per_test_level(0.05, 31)
    keys = [(10, 250, 426, level, EPSILON, SOURCE_ROWS, MIN_SAMPLES), (7, 90, 300, level, EPSILON, None, 200)]
    for key in keys:
        with pytest.raises(ThresholdPending):
            thresholds(*key)
    _simulate(thresholds, *keys)
    inline = [calibration.threshold(*key) for key in keys]
    assert [thresholds(*key) for key in keys] == inline
    assert len(set(inline)) == 2


def test_the_same_windows_get_the_same_decisions_on_both_paths(thresholds: Thresholds) -> None:
    """Every row (PSI, thresholds, flags) equals the inline path's; the first look at the windows,
    before any threshold is simulated, judges none (nothing flagged), and the eventual judgement is
    today's. The windows hold flagged and unflagged ones, so a wrong threshold would show."""
    summaries, quality = _windows()
    first = window_rows(summaries, quality, source_rows=SOURCE_ROWS, thresholds=thresholds)
    assert all(row["drift"]["pending"] and not row["drift"]["flagged"] for row in first)
    judged = _judged(thresholds, summaries, quality)
    inline = window_rows(summaries, quality, source_rows=SOURCE_ROWS)
    assert judged == inline
    flags = [row["drift"]["flagged"] for row in inline]
    assert flags == [False, False, False, True, True]
    assert inline[-1]["drift"]["score_threshold"] is not None  # the score test was judged too


def test_the_event_loop_never_simulates(thresholds: Thresholds, monkeypatch: pytest.MonkeyPatch) -> None:
    """Judging windows from inside a running loop simulates every threshold on another thread; the
    simulation refuses to run on a loop's thread."""
    threads: list[tuple[str, bool]] = []
    inline = calibration.simulated_threshold

    def watched(*args: Any) -> float:
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        threads.append((threading.current_thread().name, on_loop))
        return inline(*args)

    monkeypatch.setattr(calibration, "simulated_threshold", watched)
    summaries, quality = _windows()
    assert len(_judged(thresholds, summaries, quality)) == 5
    assert threads, "no threshold was simulated"
    assert not [t for t in threads if t[1]], threads
    assert all(name.startswith("drift-thresholds") for name, _ in threads), threads

    async def on_the_loop() -> None:
        simulate((10, 250, 426, None, 0.01, EPSILON))

    with pytest.raises(SimulationOnLoop):
        asyncio.run(on_the_loop())


def test_the_app_simulates_in_another_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The app's default: a spawned process, with the draws the inline path makes (``few_draws``
    undone: that process would not see them), gives the inline thresholds; after a close, a fresh
    process simulates the next."""
    monkeypatch.undo()
    SIMULATED.cache_clear()
    made = Thresholds()
    level = calibration.per_test_level(0.05, 31)
    key = (10, 250, 426, level, EPSILON, SOURCE_ROWS, MIN_SAMPLES)
    try:
        with pytest.raises(ThresholdPending):
            made(*key)
        _simulate(made, key)
        assert made(*key) == calibration.threshold(*key)
        assert made.simulated_in
        assert os.getpid() not in made.simulated_in
        made.close()
        other = (10, 300, 426, level, EPSILON, SOURCE_ROWS, MIN_SAMPLES)
        with pytest.raises(ThresholdPending):
            made(*other)
        _simulate(made, other)
        assert made(*other) == calibration.threshold(*other)
        assert len(made.simulated_in) == 2  # a fresh process after the close
    finally:
        made.close()
        SIMULATED.cache_clear()


def test_a_failed_simulation_fails_its_lookup_as_inline(thresholds: Thresholds) -> None:
    key = (10, 250, 0, 0.01, EPSILON)  # a reference of no samples
    with pytest.raises(ThresholdPending):
        thresholds(*key)
    with pytest.raises(calibration.DriftError):
        _simulate(thresholds, key)
    with pytest.raises(calibration.DriftError):
        thresholds(*key)
    with pytest.raises(calibration.DriftError):
        calibration.threshold(10, 250, 0, 0.01, EPSILON)


def test_a_judgement_that_gives_up_withdraws_what_it_waited_for(thresholds: Thresholds) -> None:
    """The view gives up after a while (its client polls again, at new sample counts): its keys not yet
    submitted are never simulated, and the rows it answers with are pending, not flagged."""
    level = calibration.per_test_level(0.05, 30)
    keys = [(10, n, 426, level, EPSILON, SOURCE_ROWS, MIN_SAMPLES) for n in (210, 260, 310)]
    summaries, quality = _windows()

    def rows() -> list[dict[str, Any]]:
        for key in keys:
            with contextlib.suppress(ThresholdPending):
                thresholds(*key)
        return window_rows(summaries, quality, source_rows=SOURCE_ROWS, thresholds=thresholds)

    answered = asyncio.run(thresholds.judged(rows, give_up_s=0.0))
    assert all(row["drift"]["pending"] and not row["drift"]["flagged"] for row in answered)
    assert thresholds.submitted == 1  # the first key asked; the others withdrawn
    _simulate(thresholds, keys[2])
    assert thresholds.submitted == 2
    with pytest.raises(ThresholdPending):
        thresholds(*keys[1])  # never simulated
    assert thresholds(*keys[2]) == calibration.threshold(*keys[2])


def test_peeking_asks_for_no_simulation(thresholds: Thresholds) -> None:
    """The view peeks: what is not simulated stays pending and nothing is queued for it."""
    summaries, quality = _windows()
    rows = thresholds.peek(
        lambda: window_rows(summaries, quality, source_rows=SOURCE_ROWS, thresholds=thresholds)
    )
    assert all(row["drift"]["pending"] for row in rows)
    assert thresholds.submitted == 0
    judged = _judged(thresholds, summaries, quality)
    peeked = thresholds.peek(
        lambda: window_rows(summaries, quality, source_rows=SOURCE_ROWS, thresholds=thresholds)
    )
    assert peeked == judged  # once judged, peeking is judging


def test_a_judgement_judges_the_counts_it_started_from(thresholds: Thresholds) -> None:
    """Summaries keep arriving while the timer waits for its thresholds: it judges the windows as they
    were when it started (the inline path's rows of that moment), not a mix."""
    summaries, quality = _windows()
    frozen = frozen_summaries(summaries.items())
    joined = w.sum_quality(quality)
    before = window_rows(dict(frozen), quality, source_rows=SOURCE_ROWS)

    async def judge_while_summaries_arrive() -> list[dict[str, Any]]:
        task = asyncio.create_task(
            thresholds.judged(
                lambda: joined_rows(frozen, joined, source_rows=SOURCE_ROWS, thresholds=thresholds)
            )
        )
        await asyncio.sleep(0)
        for state in summaries.values():  # more (shifted-looking) scores into every window
            late = PartialSummary("eu", "n", "embedding-scorer", 1, state["start_ms"])
            for _ in range(200):
                late.add_result(0, 0.05, 5.0)
            w.add_summary(state, late)
        return await task

    judged = asyncio.run(judge_while_summaries_arrive())
    assert judged == before
    assert window_rows(summaries, quality, source_rows=SOURCE_ROWS) != before  # the counts did move
