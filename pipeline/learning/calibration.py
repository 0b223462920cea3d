"""Thresholds for drift that keep the false alarms of unshifted windows at a chosen rate.

A window of ``n`` samples drawn from the population its reference came from still differs from the
reference: both are finite samples. To second order, PSI is Pearson's statistic over the sample
count: ``psi ~ sum((a - e)**2 / e)``. With ``a`` the shares of ``n`` independent samples and ``e``
those of ``m`` others (the reference) from the same population, over ``k`` bins with counts on the
reference side, ``sum((a - e)**2 / p)`` is ``(1/n + 1/m)`` times a chi-square with ``k - 1`` degrees
of freedom. When the window's samples are themselves drawn with replacement from a finite set of
``s`` inputs (the demo's devices replay 143 held-out rows), that set's own deviation adds ``1/s``.

That approximation runs 5-12% low in the far tail at the demo's sizes (PSI's
logarithm weighs a thin bin more than Pearson does), which at 30 features was enough to double the
false alarms. So a threshold is the quantile of simulated PSI instead (``simulated_threshold``): the
reference (``m`` samples), the finite source (``s``) and the window (``n``) drawn as multinomials over
``k`` equal bins (what quantile bins make), ``SIMULATED_DRAWS`` draws or more per (k, n, m, s,
level), seeded by that key and cached (~0.25 s each on the 2-core box). The threshold is the
quantile's upper confidence bound (an order statistic a little past it, so that simulation noise errs
towards fewer alarms), with ``n`` rounded down to a grid ``2 ** (1/16)`` apart (a few more samples
never lower a threshold, and windows of nearby sizes share one simulation). Below the sample count
that can flag a window (``fine_from``: drift's ``MIN_SAMPLES``) the grid is ``2 ** (1/2)`` apart:
those thresholds are shown, never used to flag, and a window filling up passes every grid point once,
each a simulation that blocked the aggregator's event loop (19.6 s of CPU for one window filling to
400 samples on the fine grid alone; ``bench`` note in the commit).

A window is flagged when any of its ``T`` tests (one per feature, one for the score histogram) passes
its own threshold, each at Sidak's level ``1 - (1 - rate) ** (1 / T)`` for a window-level rate
``rate``: exact for independent tests and conservative (fewer alarms) for positively dependent ones,
as features measured on the same samples are. The default rate is ``FALSE_POSITIVE_RATE`` (5% of
unshifted windows). ``tests/pipeline/learning/test_calibration.py`` checks the approximation against
simulation and the rate on windows; ``bench/drift`` measures the detector on the demo's data.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

from edgestream.pipeline.errors import EdgestreamError

FALSE_POSITIVE_RATE: Final = 0.05
"""Share of unshifted windows a calibrated detector may flag (all its tests together)."""
GRID_STEPS: Final = 16
"""Grid points per doubling of the sample count that thresholds are simulated at."""
GRID_FROM: Final = 16
"""Sample counts up to this are simulated as they are (on the fine grid)."""
COARSE_STEPS: Final = 2
"""Grid points per doubling below ``fine_from`` (windows too small to be flagged)."""
SIMULATED_DRAWS: Final = 40_000
"""Fewest simulated windows behind a threshold (more where the level is under 100 / this, so that at
least 100 pass the quantile on average)."""
MOST_DRAWS: Final = 1_000_000
"""Most simulated windows behind a threshold (a level under 1e-4 is estimated from fewer passes)."""


class DriftError(EdgestreamError, ValueError):
    """A drift computation was given inputs it cannot judge (no samples, an empty reference)."""

    reason = "drift_input"


def per_test_level(rate: float, tests: int) -> float:
    """Sidak's level of each of ``tests`` tests for a family-wise false-positive ``rate``."""
    if not 0.0 < rate < 1.0:
        raise DriftError(f"false-positive rate must be in (0, 1), got {rate}")
    if tests < 1:
        raise DriftError(f"need at least one test, got {tests}")
    return float(-np.expm1(np.log1p(-rate) / tests))


def noise_scale(n: int, m: int, source_rows: int | None = None) -> float:
    """``1/n + 1/m (+ 1/s)``: the variance factor of a window's shares against its reference's."""
    if n <= 0:
        raise DriftError(f"a window needs samples to be judged, got n={n}")
    if m <= 0:
        raise DriftError(f"a reference needs samples, got m={m}")
    if source_rows is not None and source_rows <= 0:
        raise DriftError(f"source rows must be positive, got {source_rows}")
    return 1.0 / n + 1.0 / m + (1.0 / source_rows if source_rows else 0.0)


def held_bins(counts: Sequence[int] | npt.NDArray[np.int64]) -> int:
    """The bins of one reference histogram that hold counts: a bin the reference never hit adds no
    noise (a window's samples there are a shift), so it is no degree of freedom."""
    array = np.asarray(counts)
    if array.ndim != 1 or array.sum() <= 0:
        raise DriftError("an empty reference histogram: every bin has no count")
    return int(np.count_nonzero(array))


def grid_floor(n: int, fine_from: int = 0) -> int:
    """The largest of 1, 2, ... (integers about ``2 ** (1/16)`` apart from 16 on) not above ``n``: the
    sample count a threshold is simulated at (at most ~4% fewer than ``n``). Below ``fine_from`` the
    grid is ``2 ** (1/2)`` apart (at most ~30% fewer: a higher threshold, never a lower one)."""
    steps = GRID_STEPS if n >= fine_from else COARSE_STEPS
    if n <= 1 or (steps == GRID_STEPS and n <= GRID_FROM):
        return n
    step = int(np.floor(steps * np.log2(n) + 1e-9))
    return min(n, int(np.ceil(2 ** (step / steps) - 1e-9)))


@functools.lru_cache(maxsize=4096)
def simulated_threshold(
    bins: int, n: int, m: int, source_rows: int | None, level: float, epsilon: float
) -> float:
    """The ``1 - level`` quantile of simulated PSI over ``bins`` equal bins (``n`` on the grid)."""
    noise_scale(n, m, source_rows)  # the same checks
    if bins <= 1:
        return 0.0
    rng = np.random.default_rng([bins, n, m, source_rows or 0])
    draws = min(max(SIMULATED_DRAWS, int(100 / level)), MOST_DRAWS)
    psi = simulated_psi(np.full(bins, 1.0 / bins), n, m, draws, rng, epsilon, source_rows)
    expected = level * draws  # simulated windows past the true quantile, on average
    above = max(1, int(expected - 2.0 * np.sqrt(expected)))  # its ~98% upper confidence bound
    return float(np.partition(psi, draws - 1 - above)[draws - 1 - above])


def threshold(
    bins: int,
    n: int,
    m: int,
    level: float,
    epsilon: float,
    source_rows: int | None = None,
    fine_from: int = 0,
) -> float:
    """The PSI past which one test of a histogram with ``bins`` bins that hold reference counts fails at
    ``level``, for a window of ``n`` samples against a reference of ``m`` (on the coarse grid below
    ``fine_from`` samples)."""
    return simulated_threshold(bins, grid_floor(n, fine_from), m, source_rows, level, epsilon)


def simulated_psi(
    shares: npt.ArrayLike,
    n: int,
    m: int,
    draws: int,
    rng: np.random.Generator,
    epsilon: float,
    source_rows: int | None = None,
) -> npt.NDArray[np.float64]:
    """PSI of ``draws`` windows of ``n`` samples against references of ``m`` samples, both drawn from
    the bin ``shares`` (the window from a finite source of ``source_rows`` drawn from them first, if
    given): the null the thresholds are the quantiles of."""
    p = np.asarray(shares, dtype=np.float64)
    p = p / p.sum()
    source = np.broadcast_to(p, (draws, len(p)))
    if source_rows:
        source = rng.multinomial(source_rows, p, size=draws) / source_rows
    window = rng.multinomial(n, source) / n
    reference = rng.multinomial(m, p, size=draws) / m
    a, e = np.maximum(window, epsilon), np.maximum(reference, epsilon)
    return np.asarray(np.sum((a - e) * np.log(a / e), axis=1), dtype=np.float64)
