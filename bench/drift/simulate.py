"""Windows drawn as the demo's devices draw them, judged as the aggregator judges them.

Each scenario gives a reference and a pool of inputs; a window is ``n`` rows drawn from the pool with
replacement (the demo's devices pick a random row per request), counted in the reference's bins and
judged by ``drift.drift_report`` with calibrated thresholds. The fixed rule of thumb the calibration
replaced (max PSI > 0.2) is counted beside it for comparison.

- ``held-out``: the demo before the shift: the zoo's training reference, devices replaying the 143
  held-out rows (one fixed split, so its rate is that split's).
- ``random-splits``: the same design over fresh random splits of the unshifted data (426 reference
  rows, 143 pool rows): the rate the calibration promises, averaged over splits.
- ``retrained``: a version retrained on shifted inputs (its reference: the counts of labelled draws
  from the first shifted pool), judged on windows from the second pool (inputs it never saw).
- ``shift``: the first window wholly after the demo's shift (the first shifted pool) against the
  training reference: its rate is the detection rate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from edgestream.pipeline.learning.drift import FeatureReference, bin_index, drift_report, training_reference
from edgestream.pipeline.models import load_dataset
from edgestream.pipeline.models.shift import shifted_pools

SIZES: Final = (200, 300, 400)
"""Window sample counts: a demo region window holds about 200-400 embeddings."""
WINDOWS: Final = 1000
"""Windows per scenario and size."""
SPLITS: Final = 500
"""Fresh splits of ``random-splits`` (the windows are shared out among them)."""
LABELLED: Final = 3000
"""Labelled draws behind the ``retrained`` reference (the demo's retraining joined ~3,100)."""
FIXED_THRESHOLD: Final = 0.2
"""The rule of thumb the calibration replaced, counted for comparison."""
SHIFT: Final = "shift"
"""The scenario whose flags are detections, not false alarms."""

IntArray = npt.NDArray[np.intp]


@dataclass(frozen=True, slots=True, eq=False)
class Setting:
    """A reference and the pool a window's rows are drawn from (already binned by the reference)."""

    reference: FeatureReference
    pool: IntArray
    """Bin of each pool row's features, ``[rows, n_features]``."""


@dataclass(frozen=True, slots=True)
class Rates:
    """What one scenario at one window size measured."""

    scenario: str
    n: int
    windows: int
    flagged: int
    """Flagged with calibrated thresholds."""
    flagged_fixed: int
    """Flagged by max PSI > ``FIXED_THRESHOLD``."""
    median_max_psi: float
    median_threshold: float
    """Median of the windows' calibrated threshold (of the test closest to failing)."""

    @property
    def rate(self) -> float:
        """Share of windows flagged, calibrated."""
        return self.flagged / self.windows

    @property
    def rate_fixed(self) -> float:
        """Share flagged by the fixed threshold."""
        return self.flagged_fixed / self.windows


def binned(reference: FeatureReference, X: npt.ArrayLike) -> IntArray:
    """The bin of each feature of each row of ``X``."""
    array = np.asarray(X, dtype=np.float64)
    return np.stack([bin_index(array[:, j], e) for j, e in enumerate(reference.edges)], axis=1)


def counts_of(setting: Setting, rows: IntArray) -> list[list[int]]:
    """A window's counts per feature from the pool rows ``rows``."""
    picked = setting.pool[rows]
    counts = setting.reference.counts
    return [np.bincount(picked[:, j], minlength=len(c)).tolist() for j, c in enumerate(counts)]


def settings_of(scenario: str, rng: np.random.Generator, splits: int = SPLITS) -> Iterator[Setting]:
    """The settings a scenario's windows are drawn from: one, or (``random-splits``) one per split."""
    data = load_dataset("embedding")
    if scenario == "random-splits":
        X = np.concatenate([data.X_train, data.X_test]).astype(np.float64)
        for _ in range(splits):
            rows = rng.permutation(len(X))
            reference = FeatureReference.from_data(X[rows[: len(data.X_train)]])
            yield Setting(reference, binned(reference, X[rows[len(data.X_train) :]]))
        return
    base = training_reference("embedding")
    first, second = shifted_pools()
    if scenario == "held-out":
        yield Setting(base, binned(base, data.X_test))
    elif scenario == "retrained":
        draws = rng.integers(0, len(first.y), LABELLED)
        counts = tuple(np.asarray(c, dtype=np.int64) for c in base.window_counts(first.X[draws]))
        own = FeatureReference(base.edges, counts, len(np.unique(draws)))
        yield Setting(own, binned(own, second.X))
    elif scenario == SHIFT:
        yield Setting(base, binned(base, first.X))
    else:
        raise ValueError(f"no scenario {scenario!r}")


def measure(
    scenario: str,
    n: int,
    windows: int,
    rng: np.random.Generator,
    *,
    source_rows: int | None,
    splits: int = SPLITS,
    on_window: Callable[[], None] | None = None,
) -> Rates:
    """``windows`` windows of ``n`` rows of ``scenario``, judged."""
    settings = list(settings_of(scenario, rng, splits))
    flagged = fixed = 0
    max_psi: list[float] = []
    thresholds: list[float] = []
    for i in range(windows):
        setting = settings[i % len(settings)]
        rows = rng.integers(0, len(setting.pool), n)
        report = drift_report(setting.reference, counts_of(setting, rows), source_rows=source_rows)
        worst = report.worst
        assert report.max_psi is not None
        assert worst is not None
        flagged += report.flagged
        fixed += report.max_psi > FIXED_THRESHOLD
        max_psi.append(report.max_psi)
        thresholds.append(worst[1])
        if on_window is not None:
            on_window()
    return Rates(
        scenario, n, windows, flagged, fixed, float(np.median(max_psi)), float(np.median(thresholds))
    )
