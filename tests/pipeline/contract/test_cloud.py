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
    Label,
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


@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(LATENCY_BOUNDS_MS)))
@example(math.nan)
@example(-math.inf)
@example(math.inf)
@example(-0.0)
@example(LATENCY_BOUNDS_MS[-1])
@example(math.nextafter(LATENCY_BOUNDS_MS[0], math.inf))
def test_a_latency_falls_in_the_first_bucket_whose_bound_it_does_not_exceed(latency_ms: float) -> None:
    expected = next(
        (i for i, bound in enumerate(LATENCY_BOUNDS_MS) if latency_ms <= bound), len(LATENCY_BOUNDS_MS)
    )
    assert latency_bucket(latency_ms) == expected


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


_Unit = tuple[list[tuple[int, float, float]], list[str]]
"""A unit's records of one (model, version): answers (label, top score, latency ms), dead letters."""
_UNIT = st.tuples(
    st.lists(st.tuples(st.integers(0, 9), st.floats(0, 1), st.floats(0, 500)), max_size=6),
    st.lists(st.sampled_from(["bad_tag", "internal", "replayed"]), max_size=3),
)


def _count(summary: PartialSummary, unit: _Unit) -> None:
    answers, dead_letters = unit
    for label, score, latency_ms in answers:
        summary.add_result(label, score, latency_ms)
    for reason in dead_letters:
        summary.add_dead_letter(reason)


@given(st.lists(st.tuples(_UNIT, st.integers(0, 10**6)), max_size=5))
@example([(([(1, 0.5, 10.0)], []), 3), (([], ["bad_tag"]), 1), (([], []), 2)])
def test_summaries_added_up_are_the_summary_of_all_their_records(units: list[tuple[_Unit, int]]) -> None:
    """What the commit stage does to the units of one commit: their summaries added up count exactly
    what one summary of all their records counts, and read back the same; the sum's time is the
    latest."""
    whole = PartialSummary(
        "eu-west", "node-1", "embedding-scorer", 1, max((at for _, at in units), default=0)
    )
    total = PartialSummary("eu-west", "node-1", "embedding-scorer", 1, 0)
    for unit, at_ms in units:
        _count(whole, unit)
        part = PartialSummary("eu-west", "node-1", "embedding-scorer", 1, at_ms)
        _count(part, unit)
        total.absorb(part)
    assert total == whole
    assert PartialSummary.from_bytes(total.to_bytes()) == whole


@pytest.mark.parametrize(
    "other",
    [
        PartialSummary("us-east", "node-1", "embedding-scorer", 1, 0),
        PartialSummary("eu-west", "node-2", "embedding-scorer", 1, 0),
        PartialSummary("eu-west", "node-1", "frame-classifier", 1, 0),
        PartialSummary("eu-west", "node-1", "embedding-scorer", 2, 0),
    ],
)
def test_a_summary_adds_up_only_its_own_model_version_and_writer(other: PartialSummary) -> None:
    summary = PartialSummary("eu-west", "node-1", "embedding-scorer", 1, 0)
    other.add_result(1, 0.9, 5.0)
    with pytest.raises(ValueError, match="cannot add"):
        summary.absorb(other)
    assert summary.results == 0


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


@pytest.mark.parametrize("length", [0, 15, 17, 64 * 1024])
def test_a_label_or_sample_whose_request_id_is_not_16_bytes_is_undecodable(length: int) -> None:
    """The contract's ``rid`` is bin 16. A backend's label with a 64 KiB one made the aggregator's join
    bucket (keyed by request id) larger than faust's changelog takes, which stopped the aggregator."""
    rid = b"r" * length
    with pytest.raises(UndecodableRecord, match="rid"):
        Label.from_bytes(Label(rid, "embedding-scorer", 1, 1).to_bytes())
    sample = Sample(rid, "eu-west", "embedding-scorer", 2, 1, b"p" * 16, (0.5,), 1, (0.2, 0.8))
    with pytest.raises(UndecodableRecord, match="rid"):
        Sample.from_bytes(sample.to_bytes())
    assert Label.from_bytes(Label(b"r" * 16, "embedding-scorer", 1, 1).to_bytes()).request_id == b"r" * 16
