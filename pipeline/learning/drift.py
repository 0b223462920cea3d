"""Drift of a window's inputs and answers against a reference: the population stability index (PSI).

PSI compares two distributions over the same bins: ``sum((a - e) * ln(a / e))`` over the bins, with
``e`` the reference share and ``a`` the window's share of each bin. Bins come from the reference's
quantiles (deciles by default), so each holds about the same share of the reference and no bin is
empty on that side; a share of zero (a bin the window never hit) is raised to ``EPSILON`` so the
logarithm stays finite. The usual reading (Siddiqi, *Credit Risk Scorecards*, 2006; the rule of thumb
of credit-risk model monitoring): below 0.1 no significant shift, 0.1-0.2 a moderate shift worth a
look, above 0.2 a significant shift; so ``PSI_THRESHOLD`` = 0.2 flags a window. PSI of a small window
is noisy, and a window flags on its worst feature: measured on the embedding data (30 features, deciles,
windows drawn from the data itself), the largest feature PSI of a window has a median of 0.22 at 100
samples, 0.10 (95th percentile 0.14) at 200 and 0.05 at 400, while a 15% scale shift of the inputs
scores ~2.4 at 200. So a report flags only from ``MIN_SAMPLES`` = 200 samples on.

The reference of a model is its training data (``load_dataset(kind).X_train``), binned once per process
(`training_reference`). The top-score histogram has fixed bins (``cloud.SCORE_BINS`` over [0, 1]), so
its reference is a histogram of the same bins. Pure numpy; no I/O.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from edgestream.pipeline.models.zoo import Kind

PSI_THRESHOLD: Final = 0.2
"""A PSI above this flags a window: the rule of thumb for a significant shift (see the module doc)."""
EPSILON: Final = 1e-4
"""Share given to an empty bin so that ``ln(a / e)`` stays finite."""
DEFAULT_BINS: Final = 10
"""Quantile bins per feature: deciles of the reference."""
MIN_SAMPLES: Final = 200
"""Fewest samples in a window for its drift to be flagged (PSI of fewer is mostly noise)."""

FloatArray = npt.NDArray[np.float64]


def quantile_edges(values: npt.ArrayLike, bins: int = DEFAULT_BINS) -> FloatArray:
    """Interior bin edges from the quantiles of ``values`` (``bins - 1`` of them, fewer where values
    repeat, e.g. a feature that is mostly 0)."""
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0:
        raise ValueError("no reference values")
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
        raise ValueError(f"bins differ: {e.shape} vs {a.shape}")
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
        """The bin of each feature of one sample (what a window counts per sample)."""
        if len(features) != self.n_features:
            raise ValueError(f"{len(features)} features, the reference has {self.n_features}")
        return [int(bin_index(x, e)) for x, e in zip(features, self.edges, strict=True)]

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
    threshold: float
    """The threshold ``flagged`` compares against."""
    min_samples: int
    """Fewest samples that can flag the window."""

    @property
    def max_psi(self) -> float | None:
        """The largest finite PSI of the window (features and score), if any."""
        values = [v for v in (*self.feature_psi, self.score_psi) if v is not None and np.isfinite(v)]
        return max(values) if values else None

    @property
    def worst_feature(self) -> int | None:
        """Index of the feature with the largest PSI."""
        finite = [(v, j) for j, v in enumerate(self.feature_psi) if np.isfinite(v)]
        return max(finite)[1] if finite else None

    @property
    def flagged(self) -> bool:
        """Past the threshold, on enough samples."""
        worst = self.max_psi
        return worst is not None and worst > self.threshold and self.samples >= self.min_samples

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (NaN becomes None)."""
        return {
            "feature_psi": [v if np.isfinite(v) else None for v in self.feature_psi],
            "score_psi": self.score_psi,
            "samples": self.samples,
            "max_psi": self.max_psi,
            "worst_feature": self.worst_feature,
            "flagged": self.flagged,
            "threshold": self.threshold,
        }


def drift_report(
    reference: FeatureReference | None,
    feature_counts: Sequence[Sequence[int]] | None,
    *,
    score_reference: Sequence[int] | None = None,
    score_counts: Sequence[int] | None = None,
    threshold: float = PSI_THRESHOLD,
    min_samples: int = MIN_SAMPLES,
) -> DriftReport:
    """PSI per feature of a window's samples (counts in ``reference``'s bins) and of its top-score
    histogram (against ``score_reference``, if given)."""
    feature_psi: tuple[float, ...] = ()
    samples = 0
    if reference is not None and feature_counts is not None:
        if len(feature_counts) != reference.n_features:
            raise ValueError(f"{len(feature_counts)} features counted, reference has {reference.n_features}")
        samples = int(sum(feature_counts[0])) if feature_counts else 0
        if samples:
            feature_psi = tuple(psi(r, c) for r, c in zip(reference.counts, feature_counts, strict=True))
    score_psi = None
    if score_reference is not None and score_counts is not None and sum(score_counts) > 0:
        score_psi = psi(score_reference, score_counts)
    return DriftReport(feature_psi, score_psi, samples, threshold, min_samples)


@functools.cache
def training_reference(kind: Kind, bins: int = DEFAULT_BINS) -> FeatureReference:
    """The reference of a model kind: its training inputs (``X_train``), binned once per process."""
    from edgestream.pipeline.models import load_dataset

    return FeatureReference.from_data(load_dataset(kind).X_train, bins)
