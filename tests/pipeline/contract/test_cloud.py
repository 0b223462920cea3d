"""Cloud records built by the edge: counting an answer into a partial summary, and sampling it, are
total for any float (a NaN score crashed every worker that read the record)."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from edgestream.pipeline.contract.cloud import (
    LATENCY_BOUNDS_MS,
    SCORE_BINS,
    PartialSummary,
    Sample,
    latency_bucket,
    score_bin,
)
from edgestream.pipeline.errors import UndecodableRecord


@pytest.mark.parametrize(
    ("score", "expected"),
    [
        (math.nan, 0),
        (-math.inf, 0),
        (-0.5, 0),
        (0.0, 0),
        (0.0999, 0),
        (0.1, 1),
        (0.55, 5),
        (0.95, 9),
        (1.0, 9),
        (7.0, 9),
        (math.inf, 9),
        (1e308, 9),
    ],
)
def test_score_bin_places_every_float(score: float, expected: int) -> None:
    assert score_bin(score) == expected


@given(st.floats(allow_nan=True, allow_infinity=True))
@example(math.nan)
@example(math.inf)
def test_score_bin_is_total(score: float) -> None:
    assert 0 <= score_bin(score) < SCORE_BINS


@given(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**63), 2**63 - 1),
)
@example(math.nan, math.nan, 0)
def test_a_summary_counts_any_answer_and_reads_back(score: float, latency_ms: float, label: int) -> None:
    summary = PartialSummary("eu-west", "node-1", "embedding-scorer", 1, 1_700_000_000_000)
    summary.add_result(label, score, latency_ms)
    assert 0 <= latency_bucket(latency_ms) <= len(LATENCY_BOUNDS_MS)
    again = PartialSummary.from_bytes(summary.to_bytes())
    assert (again.results, sum(again.score_bins), sum(again.latency_buckets)) == (1, 1, 1)


def test_a_sample_with_non_finite_values_is_refused_by_its_reader() -> None:
    # The worker never sends one (non-finite inputs and outputs are dead-lettered non_finite); a
    # record another principal wrote with them is refused, so the aggregator skips and counts it.
    sample = Sample(
        request_id=bytes(16),
        region="eu-west",
        model="embedding-scorer",
        model_version=1,
        at_ms=1,
        device=bytes(16),
        features=(math.nan, math.inf, -math.inf, 0.5),
        label=1,
        scores=(math.nan, math.inf),
    )
    with pytest.raises(UndecodableRecord, match="finite"):
        Sample.from_bytes(sample.to_bytes())
