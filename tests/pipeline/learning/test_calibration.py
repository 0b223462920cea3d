"""Calibrated drift thresholds: the chi-square approximation against simulation, the false-positive
rate they promise, the demo's shift still detected, and clear errors for what cannot be judged."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edgestream.pipeline.learning.calibration import (
    FALSE_POSITIVE_RATE,
    DriftError,
    grid_floor,
    held_bins,
    noise_scale,
    per_test_level,
    simulated_psi,
    threshold,
)
from edgestream.pipeline.learning.drift import EPSILON, FeatureReference, drift_report, training_reference


@pytest.mark.parametrize(("n", "source_rows"), [(200, None), (400, None), (200, 143), (400, 143)])
def test_chi_square_approximates_simulated_psi_and_the_thresholds_are_its_quantiles(
    n: int, source_rows: int | None
) -> None:
    """PSI of a window of n against a reference of m from the same 10 bins is about (1/n + 1/m [+ 1/s])
    chi2(9): the simulated quantile at the per-feature level of 30 features is within 20% of it (and
    at or above it: PSI's tail is the heavier); the thresholds used are that simulated quantile."""
    m, shares = 426, [0.1] * 10
    level = per_test_level(FALSE_POSITIVE_RATE, 30)
    simulated = simulated_psi(shares, n, m, 200_000, np.random.default_rng(15), EPSILON, source_rows)
    quantile = float(np.quantile(simulated, 1 - level))
    from scipy.stats import chi2  # type: ignore[import-untyped]  # scikit-learn's dependency

    analytic = float(chi2.isf(level, 9)) * noise_scale(n, m, source_rows)
    assert analytic * 0.97 <= quantile <= analytic * 1.2
    used = threshold(10, n, m, level, EPSILON, source_rows)
    assert used == pytest.approx(quantile, rel=0.08)  # fewer draws, n on the grid
    assert np.mean(simulated > used) < 1.5 * level


def test_window_sizes_round_down_to_the_grid() -> None:
    assert [grid_floor(n) for n in (1, 16, 17, 200, 300, 400)] == [1, 16, 17, 198, 292, 395]
    grid = sorted({grid_floor(n) for n in range(64, 5000)})
    assert all(b / a <= 1.06 for a, b in itertools.pairwise(grid))  # ~4% apart, and integers
    assert all(grid_floor(g) == g for g in grid)


def test_windows_too_small_to_flag_use_a_coarse_grid_that_never_lowers_a_threshold() -> None:
    """Below ``fine_from`` (drift's MIN_SAMPLES) a window filling up passes ~2 grid points per doubling
    instead of 16: each is a simulation, and such a window is never flagged anyway."""
    coarse = sorted({grid_floor(n, fine_from=200) for n in range(1, 200)})
    assert len(coarse) <= 16 < len({grid_floor(n) for n in range(1, 200)})
    assert all(grid_floor(n, fine_from=200) <= grid_floor(n) <= n for n in range(1, 1000))
    assert [grid_floor(n, fine_from=200) for n in (1, 2, 3, 100, 199, 200, 300)] == [
        1,
        2,
        3,
        91,
        182,
        198,
        292,
    ]
    level = per_test_level(FALSE_POSITIVE_RATE, 30)
    for n in (50, 150):  # fewer samples simulated: a higher threshold, never a lower one
        assert threshold(10, n, 426, level, EPSILON, 143, fine_from=200) >= threshold(
            10, n, 426, level, EPSILON, 143
        )


def test_window_false_positive_rate_is_near_its_target() -> None:
    """30 independent features, windows drawn from the reference's own shares: about 5% of windows
    flag (the Sidak correction holds the family's rate, not each feature's)."""
    k, features, n, windows = 10, 30, 292, 3000  # n on the grid: a threshold for exactly n samples
    exact = np.full(k, 10**6, dtype=np.int64)  # a reference with (practically) no noise of its own
    reference = FeatureReference(tuple(np.arange(1.0, k) for _ in range(features)), (exact,) * features)
    rng = np.random.default_rng(15)
    counts = rng.multinomial(n, np.full(k, 1 / k), size=(windows, features))
    flagged = sum(drift_report(reference, list(window)).flagged for window in counts)
    assert 0.035 <= flagged / windows <= 0.065, flagged


def test_demo_design_false_alarms_stay_low_where_the_fixed_threshold_fired() -> None:
    """Windows as the demo draws them (rows replayed from a held-out pool of 143, reference 426 rows),
    over fresh splits: calibrated, at most ~5% flag; the old fixed 0.2 flagged most of them."""
    from bench.drift.simulate import measure

    rates = measure("random-splits", 300, 400, np.random.default_rng(15), source_rows=143, splits=200)
    assert rates.rate <= 0.08, rates  # 5% expected; the bound leaves room for 200 splits' noise
    assert rates.rate_fixed >= 0.3, rates  # what the calibration is for


def test_the_demo_shift_is_detected_in_the_first_window_after_it() -> None:
    from bench.drift.simulate import measure

    rates = measure("shift", 200, 100, np.random.default_rng(15), source_rows=143)
    assert rates.rate >= 0.98, rates


def test_thresholds_grow_as_windows_shrink() -> None:
    reference = training_reference("embedding")
    rng = np.random.default_rng(3)
    X = np.asarray(reference_rows(), dtype=np.float64)
    by_n = {}
    for n in (50, 100, 200, 400, 800):
        report = drift_report(reference, reference.window_counts(X[rng.integers(0, len(X), n)]))
        assert len(report.feature_thresholds) == reference.n_features
        by_n[n] = report.feature_thresholds
    for small, large in zip(list(by_n.values()), list(by_n.values())[1:], strict=False):
        assert all(s > t for s, t in zip(small, large, strict=True))
    widened = drift_report(reference, reference.window_counts(X[:200]), source_rows=143)
    narrow = drift_report(reference, reference.window_counts(X[:200]))
    assert all(w > t for w, t in zip(widened.feature_thresholds, narrow.feature_thresholds, strict=True))
    stricter = drift_report(reference, reference.window_counts(X[:200]), false_positive_rate=0.01)
    assert all(s > t for s, t in zip(stricter.feature_thresholds, narrow.feature_thresholds, strict=True))


def test_bad_inputs_are_refused_clearly() -> None:
    with pytest.raises(DriftError, match="n=0"):
        noise_scale(0, 100)
    with pytest.raises(DriftError, match="reference needs samples"):
        noise_scale(100, 0)
    with pytest.raises(DriftError, match="rate"):
        per_test_level(0.0, 30)
    with pytest.raises(DriftError, match="at least one test"):
        per_test_level(0.05, 0)
    with pytest.raises(DriftError, match="empty reference histogram"):
        held_bins([0, 0, 0])
    with pytest.raises(DriftError, match="n=0"):
        threshold(10, 0, 426, 0.01, EPSILON)
    empty = drift_report(reference_of_two_bins(), [[0, 0]])  # a window without samples: not judged
    assert (empty.feature_psi, empty.feature_thresholds, empty.flagged) == ((), (), False)
    edges = (np.array([1.0, 2.0]), np.array([1.0, 2.0]))
    with pytest.raises(DriftError, match="feature 1: the reference has no counts"):
        FeatureReference(edges, (np.array([1, 2, 3]), np.array([0, 0, 0])))
    with pytest.raises(DriftError, match="3 counts for 2 bins"):
        FeatureReference((np.array([1.0]),), (np.array([1, 2, 3]),))
    assert DriftError.reason == "drift_input"
    assert isinstance(DriftError("x"), ValueError)  # callers that caught ValueError still do


def test_an_empty_reference_bin_adds_no_noise_and_a_window_in_it_flags() -> None:
    """A bin the reference never hit is not a degree of freedom; samples landing there are a shift."""
    assert held_bins([0, 50, 50, 50]) == 3
    reference = FeatureReference((np.array([0.0, 1.0, 2.0]),), (np.array([0, 100, 100, 100]),))
    calm = drift_report(reference, [[0, 70, 65, 65]])
    assert not calm.flagged, calm
    assert calm.feature_thresholds[0] == threshold(3, 200, 300, 0.05, EPSILON)
    new = drift_report(reference, [[20, 60, 60, 60]])
    assert new.flagged, new


def reference_of_two_bins() -> FeatureReference:
    return FeatureReference((np.array([0.0]),), (np.array([5, 5]),))


def reference_rows() -> np.ndarray:
    from edgestream.pipeline.models import load_dataset

    return np.asarray(load_dataset("embedding").X_train)
