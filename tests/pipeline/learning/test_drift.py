"""PSI: zero on the reference itself, symmetric, finite with empty bins, flags a shift and not noise
(calibrated thresholds: ``test_calibration.py``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgestream.pipeline.learning.calibration import DriftError
from edgestream.pipeline.learning.drift import (
    EPSILON,
    MIN_SAMPLES,
    FeatureReference,
    bin_index,
    drift_report,
    histogram,
    psi,
    quantile_edges,
    training_reference,
)


def test_psi_of_identical_shares_is_zero_and_symmetric() -> None:
    assert psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0)
    assert psi([10, 20, 30], [30, 20, 10]) == pytest.approx(psi([30, 20, 10], [10, 20, 30]))


def test_psi_matches_the_formula_and_floors_empty_bins() -> None:
    expected = (0.5 - 0.25) * math.log(0.5 / 0.25) + (0.5 - 0.75) * math.log(0.5 / 0.75)
    assert psi([1, 3], [1, 1]) == pytest.approx(expected)
    value = psi([1, 1], [0, 4])
    assert math.isfinite(value)
    assert value == pytest.approx((EPSILON - 0.5) * math.log(EPSILON / 0.5) + 0.5 * math.log(2))
    assert math.isnan(psi([0, 0], [1, 1]))
    with pytest.raises(DriftError, match="bins differ"):
        psi([1, 2], [1, 2, 3])


def test_quantile_bins_share_the_reference_evenly() -> None:
    values = np.arange(1000, dtype=np.float64)
    edges = quantile_edges(values, 10)
    assert len(edges) == 9
    assert histogram(values, edges).tolist() == [100] * 10
    assert len(quantile_edges(np.zeros(100), 10)) == 1  # repeated values: fewer bins


def test_reference_and_window_counts_agree() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(2000, 3))
    reference = FeatureReference.from_data(X)
    one = reference.window_counts(X[:5])
    by_sample = reference.empty_counts()
    for row in X[:5]:
        for j, b in enumerate(reference.bins_of(row.tolist())):
            by_sample[j][b] += 1
    assert one == by_sample


def test_training_data_does_not_flag_and_a_shift_does() -> None:
    reference = training_reference("embedding")
    X = np.asarray(reference_data(), dtype=np.float64)
    rng = np.random.default_rng(7)
    window = X[rng.integers(0, len(X), 400)]
    same = drift_report(reference, reference.window_counts(window))
    assert same.samples == 400
    assert same.max_psi is not None
    assert same.excess is not None
    assert same.excess < 1.0
    assert not same.flagged
    shifted = drift_report(reference, reference.window_counts(window * 1.15))
    assert shifted.flagged
    assert shifted.max_psi is not None
    assert shifted.max_psi > 1.0
    assert shifted.to_dict()["threshold"] == shifted.feature_thresholds[shifted.worst_feature or 0]
    few = drift_report(reference, reference.window_counts(window[: MIN_SAMPLES - 1] * 1.15))
    assert not few.flagged  # too few samples to call it


def test_score_histogram_drift() -> None:
    report = drift_report(None, None, score_reference=[0] * 8 + [50, 50], score_counts=[50, 50] + [0] * 8)
    assert report.score_psi is not None
    assert report.score_threshold is not None
    assert report.score_psi > report.score_threshold
    assert report.worst == (report.score_psi, report.score_threshold)
    assert report.feature_psi == ()
    assert report.to_dict()["max_psi"] == report.score_psi
    assert report.to_dict()["worst_feature"] is None
    assert not report.flagged  # no feature samples: too few to call it


def reference_data() -> np.ndarray:
    from edgestream.pipeline.models import load_dataset

    dataset = load_dataset("embedding")
    return np.vstack([dataset.X_train, dataset.X_test])


def test_bins_of_one_sample_is_each_features_bin_index() -> None:
    """The one-comparison ``bins_of`` equals ``bin_index`` per feature, on edges themselves, between
    and past them, NaN (last, as searchsorted sorts it) and both infinities; features with fewer edges
    (repeated quantiles) included."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(500, 6))
    X[:, 2] = np.where(X[:, 2] > 0.5, X[:, 2], 0.0)  # mostly 0: fewer edges
    X[:, 4] = rng.integers(0, 3, 500)  # three values: two edges
    reference = FeatureReference.from_data(X)
    assert len({len(e) for e in reference.edges}) > 1
    specials = [np.nan, np.inf, -np.inf, 0.0]
    for _ in range(300):
        row = rng.normal(size=6) * 2
        for j in rng.choice(6, 2, replace=False):
            row[j] = rng.choice([*specials, *reference.edges[j]]) if len(reference.edges[j]) else np.nan
        expected = [int(bin_index(x, e)) for x, e in zip(row, reference.edges, strict=True)]
        assert reference.bins_of(row.tolist()) == expected, row
