"""Drift of a window's inputs and answers against a reference: the population stability index (PSI).

PSI compares two distributions over the same bins: ``sum((a - e) * ln(a / e))`` over the bins, with
``e`` the reference share and ``a`` the window's share of each bin. Bins come from the reference's
quantiles (deciles by default), so each holds about the same share of the reference (fewer bins where
values repeat); a share of zero (a bin the window never hit) is raised to ``EPSILON`` so the logarithm
stays finite.

A window is flagged when any feature's PSI (or the top-score histogram's) passes its own calibrated
threshold (``calibration.py``), not the credit-risk rule of thumb of 0.2: PSI of a small window is
mostly sampling noise and a window flags on its worst of 30 features, so at the demo's 200-400
samples the fixed 0.2 flagged most unshifted windows. Each threshold is the high quantile of the PSI a
window of that many samples shows when nothing shifted (simulated: about ``(1/n + 1/m) * chi2(k - 1)``
with ``m`` the reference's samples and ``k`` its bins), at Sidak's per-test level for a window-level
false-positive rate of ``FALSE_POSITIVE_RATE`` (5%). A report still flags only from ``MIN_SAMPLES``
samples on: below that even a real shift reads close to the noise.

The reference of a model is its training data (``load_dataset(kind).X_train``), binned once per process
(`training_reference`). The top-score histogram has fixed bins (``cloud.SCORE_BINS`` over [0, 1]), so
its reference is a histogram of the same bins. Pure numpy; no I/O.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol

import numpy as np
import numpy.typing as npt

from edgestream.pipeline.learning.calibration import (
    FALSE_POSITIVE_RATE,
    DriftError,
    grid_floor,
    held_bins,
    per_test_level,
    threshold,
)

if TYPE_CHECKING:
    from edgestream.pipeline.models.zoo import Kind

EPSILON: Final = 1e-4
"""Share given to an empty bin so that ``ln(a / e)`` stays finite."""
DEFAULT_BINS: Final = 10
"""Quantile bins per feature: deciles of the reference."""
MIN_SAMPLES: Final = 200
"""Fewest samples in a window for its drift to be flagged (PSI of fewer is mostly noise)."""

FloatArray = npt.NDArray[np.float64]


class ThresholdFn(Protocol):
    """What gives a test its threshold: ``calibration.threshold``, or a lookup of thresholds simulated
    elsewhere with the same arguments (the aggregator's, off its event loop)."""

    def __call__(
        self,
        bins: int,
        n: int,
        m: int,
        level: float,
        epsilon: float,
        source_rows: int | None = None,
        fine_from: int = 0,
    ) -> float: ...


def quantile_edges(values: npt.ArrayLike, bins: int = DEFAULT_BINS) -> FloatArray:
    """Interior bin edges from the quantiles of ``values`` (``bins - 1`` of them, fewer where values
    repeat, e.g. a feature that is mostly 0)."""
    if bins < 2:
        raise DriftError(f"bins must be >= 2, got {bins}")
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0:
        raise DriftError("no reference values")
    edges = np.quantile(array, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    return np.unique(edges)


def bin_index(values: npt.ArrayLike, edges: FloatArray) -> npt.NDArray[np.intp]:
    """The bin of each value: 0 below the first edge, ``len(edges)`` from the last one up."""
    return np.searchsorted(edges, np.asarray(values, dtype=np.float64), side="right")


def histogram(values: npt.ArrayLike, edges: FloatArray) -> npt.NDArray[np.int64]:
    """Counts of ``values`` in the ``len(edges) + 1`` bins ``edges`` make."""
    return np.bincount(bin_index(values, edges).ravel(), minlength=len(edges) + 1).astype(np.int64)


def psi(reference: npt.ArrayLike, actual: npt.ArrayLike, epsilon: float = EPSILON) -> float:
    """PSI of ``actual`` against ``reference``: both are counts (or shares) over the same bins.

    0 for identical shares; symmetric in the two; NaN when either side has no counts at all.
    """
    e = np.asarray(reference, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or e.ndim != 1:
        raise DriftError(f"bins differ: {e.shape} vs {a.shape}")
    if e.sum() <= 0 or a.sum() <= 0:
        return float("nan")
    e_share = np.maximum(e / e.sum(), epsilon)
    a_share = np.maximum(a / a.sum(), epsilon)
    return float(np.sum((a_share - e_share) * np.log(a_share / e_share)))


@dataclass(frozen=True, slots=True, eq=False)
class FeatureReference:
    """Per-feature quantile bins of a reference set and its counts in them."""

    edges: tuple[FloatArray, ...]
    """Interior edges of each feature's bins."""
    counts: tuple[npt.NDArray[np.int64], ...]
    """The reference's count in each bin of each feature."""
    size: int | None = None
    """Independent samples behind the counts, where fewer than their total (copies of one input counted
    several times); None: the total."""
    _padded: FloatArray = field(init=False, repr=False, compare=False)
    """Every feature's edges in one ``[features, most edges]`` array, NaN past a feature's last edge
    (no value is >= NaN): `bins_of` in one comparison instead of a searchsorted per feature."""
    _lengths: npt.NDArray[np.intp] = field(init=False, repr=False, compare=False)
    """How many edges each feature has (the bin of a NaN feature, as searchsorted puts NaN last)."""

    def __post_init__(self) -> None:
        if len(self.edges) != len(self.counts):
            raise DriftError(f"{len(self.edges)} features binned, {len(self.counts)} counted")
        for j, (e, c) in enumerate(zip(self.edges, self.counts, strict=True)):
            if len(c) != len(e) + 1:
                raise DriftError(f"feature {j}: {len(c)} counts for {len(e) + 1} bins")
            if np.sum(c) <= 0 or np.min(c) < 0:
                raise DriftError(f"feature {j}: the reference has no counts in any bin (or a negative one)")
        if self.size is not None and self.size <= 0:
            raise DriftError(f"a reference of {self.size} samples")
        padded = np.full((len(self.edges), max((len(e) for e in self.edges), default=0)), np.nan)
        for j, e in enumerate(self.edges):
            padded[j, : len(e)] = e
        object.__setattr__(self, "_padded", padded)
        object.__setattr__(self, "_lengths", np.array([len(e) for e in self.edges], dtype=np.intp))

    @property
    def samples(self) -> int:
        """Samples the reference stands for: ``size``, else its count total."""
        return self.size if self.size is not None else int(np.sum(self.counts[0])) if self.counts else 0

    @classmethod
    def from_data(cls, X: npt.ArrayLike, bins: int = DEFAULT_BINS) -> FeatureReference:
        """Bins from the quantiles of each column of ``X`` (``[n, n_features]``; items of any shape are
        flattened to feature vectors)."""
        array = np.asarray(X, dtype=np.float64)
        array = array.reshape(array.shape[0], -1)
        edges = tuple(quantile_edges(array[:, j], bins) for j in range(array.shape[1]))
        counts = tuple(histogram(array[:, j], e) for j, e in enumerate(edges))
        return cls(edges, counts)

    @property
    def n_features(self) -> int:
        """How many features."""
        return len(self.edges)

    def bins_of(self, features: Sequence[float]) -> list[int]:
        """The bin of each feature of one sample (what a window counts per sample): ``bin_index`` of
        each feature against its edges, in one comparison (~6 us instead of ~60 for 30 features)."""
        if len(features) != self.n_features:
            raise DriftError(f"{len(features)} features, the reference has {self.n_features}")
        values = np.asarray(features, dtype=np.float64)
        bins = (self._padded <= values[:, None]).sum(axis=1)
        nan = np.isnan(values)
        if nan.any():
            bins[nan] = self._lengths[nan]
        return list(bins.tolist())

    def empty_counts(self) -> list[list[int]]:
        """Zero counts in the shape of the reference's bins, for a window to add samples into."""
        return [[0] * len(c) for c in self.counts]

    def window_counts(self, X: npt.ArrayLike) -> list[list[int]]:
        """Counts of a set of samples ``[n, n_features]`` in the reference's bins."""
        array = np.asarray(X, dtype=np.float64).reshape(-1, self.n_features)
        return [histogram(array[:, j], e).tolist() for j, e in enumerate(self.edges)]


@dataclass(frozen=True, slots=True)
class DriftReport:
    """The drift of one window against its reference."""

    feature_psi: tuple[float, ...]
    """PSI of each input feature (empty where the window has no samples or the model no features)."""
    score_psi: float | None
    """PSI of the top-score histogram, if a score reference was given."""
    samples: int
    """Samples the feature PSI is computed from."""
    feature_thresholds: tuple[float, ...]
    """The calibrated threshold of each feature at this window's sample count (``calibration.py``)."""
    score_threshold: float | None
    """The calibrated threshold of the score histogram's PSI, if it was judged."""
    min_samples: int
    """Fewest samples that can flag the window."""
    false_positive_rate: float = FALSE_POSITIVE_RATE
    """Share of unshifted windows the thresholds let through flagged (all tests together)."""

    def _ratios(self) -> list[tuple[float, int | None]]:
        """(PSI / its threshold, feature index or None for the score) of every finite judged test."""
        out: list[tuple[float, int | None]] = [
            (_ratio(v, t), j)
            for j, (v, t) in enumerate(zip(self.feature_psi, self.feature_thresholds, strict=True))
            if np.isfinite(v)
        ]
        if self.score_psi is not None and self.score_threshold is not None and np.isfinite(self.score_psi):
            out.append((_ratio(self.score_psi, self.score_threshold), None))
        return out

    @property
    def max_psi(self) -> float | None:
        """The largest finite PSI of the window (features and score), if any."""
        values = [v for v in (*self.feature_psi, self.score_psi) if v is not None and np.isfinite(v)]
        return max(values) if values else None

    def _worst(self) -> tuple[float, int | None] | None:
        """The test furthest past (or closest to) its threshold: (PSI / threshold, feature or None)."""
        ratios = self._ratios()
        return max(ratios, key=lambda r: r[0]) if ratios else None

    @property
    def excess(self) -> float | None:
        """The largest PSI over its own threshold among the tests (> 1: some test failed)."""
        worst = self._worst()
        return None if worst is None else worst[0]

    @property
    def worst_feature(self) -> int | None:
        """Index of the feature furthest past (or closest to) its threshold."""
        ratios = [(r, j) for r, j in self._ratios() if j is not None]
        return max(ratios)[1] if ratios else None

    @property
    def worst_test(self) -> str | None:
        """``feature <j>`` or ``score``: the test with the largest ``excess``."""
        found = self._worst()
        if found is None:
            return None
        return "score" if found[1] is None else f"feature {found[1]}"

    @property
    def worst(self) -> tuple[float, float] | None:
        """(PSI, threshold) of the test with the largest ``excess``: a feature's, or the score's."""
        found = self._worst()
        if found is None:
            return None
        j = found[1]
        if j is None:
            assert self.score_psi is not None
            assert self.score_threshold is not None
            return self.score_psi, self.score_threshold
        return self.feature_psi[j], self.feature_thresholds[j]

    @property
    def flagged(self) -> bool:
        """Some test past its threshold, on enough samples."""
        worst = self.excess
        return worst is not None and worst > 1.0 and self.samples >= self.min_samples

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (NaN becomes None)."""
        worst = self.worst
        return {
            "feature_psi": [v if np.isfinite(v) else None for v in self.feature_psi],
            "score_psi": self.score_psi,
            "samples": self.samples,
            "max_psi": self.max_psi,
            "worst_feature": self.worst_feature,
            "worst_test": self.worst_test,
            "worst_psi": None if worst is None else worst[0],
            "threshold": None if worst is None else worst[1],
            "excess": self.excess,
            "flagged": self.flagged,
            "feature_thresholds": list(self.feature_thresholds),
            "score_threshold": self.score_threshold,
            "false_positive_rate": self.false_positive_rate,
        }


def _ratio(value: float, limit: float) -> float:
    """``value / limit``; with no noise to allow for (a histogram of one bin), any PSI is past it."""
    if limit > 0:
        return value / limit
    return float(np.inf) if value > 0 else 0.0


def drift_report(
    reference: FeatureReference | None,
    feature_counts: Sequence[Sequence[int]] | None,
    *,
    score_reference: Sequence[int] | None = None,
    score_counts: Sequence[int] | None = None,
    false_positive_rate: float = FALSE_POSITIVE_RATE,
    source_rows: int | None = None,
    min_samples: int = MIN_SAMPLES,
    thresholds: ThresholdFn = threshold,
) -> DriftReport:
    """PSI per feature of a window's samples (counts in ``reference``'s bins) and of its top-score
    histogram (against ``score_reference``, if given), each with its calibrated threshold:
    ``false_positive_rate`` of unshifted windows flagged, whose samples are drawn from ``source_rows``
    distinct inputs where that is finite (None: a continuous population). ``thresholds`` gives each
    test's threshold (what it raises, e.g. a threshold not simulated yet, propagates)."""
    feature_psi: tuple[float, ...] = ()
    samples = 0
    if reference is not None and feature_counts is not None:
        if len(feature_counts) != reference.n_features:
            raise DriftError(f"{len(feature_counts)} features counted, reference has {reference.n_features}")
        samples = int(sum(feature_counts[0])) if feature_counts else 0
        if samples:
            feature_psi = tuple(psi(r, c) for r, c in zip(reference.counts, feature_counts, strict=True))
    score_psi = None
    score_n = 0
    if (
        score_reference is not None
        and score_counts is not None
        and min(sum(score_counts), sum(score_reference)) > 0
    ):
        score_psi = psi(score_reference, score_counts)
        score_n = int(sum(score_counts))
    tests = len(feature_psi) + (score_psi is not None)
    feature_thresholds: tuple[float, ...] = ()
    score_threshold = None
    if tests:
        level = per_test_level(false_positive_rate, tests)
        if feature_psi and reference is not None:
            m = reference.samples
            feature_thresholds = tuple(
                thresholds(held_bins(c), samples, m, level, EPSILON, source_rows, min_samples)
                for c in reference.counts
            )
        if score_psi is not None and score_reference is not None:
            pooled = np.asarray(score_reference) + np.asarray(score_counts)
            # The score's reference is its series' first window: its size differs per series, and
            # rounded down to the grid (a little more noise allowed) series share simulations.
            m = grid_floor(int(sum(score_reference)))
            score_threshold = thresholds(held_bins(pooled), score_n, m, level, EPSILON, fine_from=min_samples)
    return DriftReport(
        feature_psi, score_psi, samples, feature_thresholds, score_threshold, min_samples, false_positive_rate
    )


@functools.cache
def training_reference(kind: Kind, bins: int = DEFAULT_BINS) -> FeatureReference:
    """The reference of a model kind: its training inputs (``X_train``), binned once per process."""
    from edgestream.pipeline.models import load_dataset

    return FeatureReference.from_data(load_dataset(kind).X_train, bins)
