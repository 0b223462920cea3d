"""The rollout judge: each bound rolls a canary back with its reason, too little evidence holds, a healthy
canary advances once its stage has dwelt and every worker reports the current revision."""

from __future__ import annotations

import pytest
import typer

from edgestream.commands.rollout import parse_bounds
from edgestream.pipeline.contract.cloud import LATENCY_BOUNDS_MS, Label, PartialSummary, Sample
from edgestream.pipeline.learning.rollout import (
    Bounds,
    VersionStats,
    accuracy_by_version,
    judge,
    version_stats,
)

BOUNDS = Bounds(min_requests=100, min_labelled=50, stage_dwell_ms=60_000)
DWELT = 60_000


def stats(
    version: int,
    results: int = 1000,
    *,
    dead: dict[str, int] | None = None,
    latency_ms: float = 20.0,
    labelled: int = 0,
    correct: int = 0,
) -> VersionStats:
    buckets = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    buckets[LATENCY_BOUNDS_MS.index(latency_ms)] = results
    return VersionStats(version, results, dead or {}, buckets, labelled, correct)


def test_a_healthy_canary_advances() -> None:
    verdict = judge(stats(1), stats(2), BOUNDS, stage_age_ms=DWELT)
    assert verdict.action == "advance", verdict.reasons
    assert "healthy" in verdict.reason


def test_too_few_requests_hold() -> None:
    verdict = judge(stats(1), stats(2, 99, dead={"infer_failed": 0}), BOUNDS, stage_age_ms=DWELT)
    assert verdict.action == "hold"
    assert verdict.reasons == ("v2 has 99 of 100 requests",)
    assert judge(stats(1, 10), stats(2), BOUNDS, stage_age_ms=DWELT).action == "hold"


def test_model_errors_past_the_bound_roll_back_with_the_numbers() -> None:
    bad = stats(2, 900, dead={"infer_failed": 100})
    verdict = judge(stats(1, dead={"infer_failed": 10}), bad, BOUNDS, stage_age_ms=0)
    assert verdict.action == "rollback"
    assert "error rate 10.00% vs stable 0.99%" in verdict.reason
    assert "infer_failed 100" in verdict.reason
    # Under two points more than stable is within the bound.
    ok = stats(2, 970, dead={"bad_shape": 25})
    assert judge(stats(1, dead={"infer_failed": 10}), ok, BOUNDS, stage_age_ms=DWELT).action == "advance"


def test_input_errors_say_nothing_about_the_version() -> None:
    noisy = stats(2, 500, dead={"replayed": 300, "stale": 100, "rate_limited": 50, "bad_tag": 50})
    assert noisy.requests == 500
    assert noisy.error_rate == 0.0
    assert judge(stats(1), noisy, BOUNDS, stage_age_ms=DWELT).action == "advance"


def test_p99_latency_is_compared_only_on_enough_requests() -> None:
    """A p99 of 100 requests is their slowest one or two: one cold batch must not roll a version back."""
    few = Bounds(min_requests=100, min_labelled=50, stage_dwell_ms=0, min_latency_requests=300)
    slow = stats(2, 299, latency_ms=250.0)
    assert judge(stats(1, latency_ms=20.0), slow, few, stage_age_ms=0).action == "advance"
    enough = stats(2, 300, latency_ms=250.0)
    assert judge(stats(1, latency_ms=20.0), enough, few, stage_age_ms=0).action == "rollback"


def test_p99_latency_past_the_ratio_rolls_back() -> None:
    verdict = judge(stats(1, latency_ms=20.0), stats(2, latency_ms=50.0), BOUNDS, stage_age_ms=0)
    assert verdict.action == "rollback"
    assert verdict.reasons == ("p99 latency 50ms vs stable 20ms (> 1.5x)",)
    assert judge(stats(1, latency_ms=20.0), stats(2, latency_ms=30.0), BOUNDS, stage_age_ms=DWELT).action == (
        "advance"
    )


def test_accuracy_drop_rolls_back_once_enough_labels() -> None:
    stable = stats(1, labelled=200, correct=190)
    worse = stats(2, labelled=200, correct=170)
    verdict = judge(stable, worse, BOUNDS, stage_age_ms=0)
    assert verdict.action == "rollback"
    assert "accuracy 0.850 vs stable 0.950" in verdict.reason
    few = stats(2, labelled=20, correct=10)
    assert judge(stable, few, BOUNDS, stage_age_ms=DWELT).action == "advance", "no labels read: not judged"


def test_where_labels_are_read_a_canary_advances_only_once_its_accuracy_is_known() -> None:
    """A canary that is 50% wrong on its first 20 labels is held, not advanced on its error rate; it is
    judged (and here rolled back) once it has ``min_labelled`` labels; a good one then advances."""
    stable = stats(1, labelled=200, correct=190)
    few = stats(2, labelled=20, correct=10)
    verdict = judge(stable, few, BOUNDS, stage_age_ms=DWELT, labels=True)
    assert verdict.action == "hold"
    assert verdict.reasons == ("v2 has 20 of 50 labelled answers",)
    assert judge(
        stable, stats(2, labelled=50, correct=25), BOUNDS, stage_age_ms=DWELT, labels=True
    ).action == ("rollback")
    assert judge(
        stable, stats(2, labelled=50, correct=48), BOUNDS, stage_age_ms=DWELT, labels=True
    ).action == ("advance")
    unlabelled_stable = stats(1)
    verdict = judge(
        unlabelled_stable, stats(2, labelled=50, correct=48), BOUNDS, stage_age_ms=DWELT, labels=True
    )
    assert verdict.reasons == ("v1 has 0 of 50 labelled answers",)


def test_every_broken_bound_is_a_reason() -> None:
    bad = stats(2, 800, dead={"infer_failed": 200}, latency_ms=100.0, labelled=100, correct=50)
    verdict = judge(stats(1, labelled=100, correct=95), bad, BOUNDS, stage_age_ms=0)
    assert verdict.action == "rollback"
    assert len(verdict.reasons) == 3


def test_dwell_time_holds_an_advance_not_a_rollback() -> None:
    verdict = judge(stats(1), stats(2), BOUNDS, stage_age_ms=DWELT - 1)
    assert verdict.action == "hold"
    assert verdict.reasons == ("stage served 59999 of 60000 ms",)


def test_a_lagging_worker_holds_the_stage() -> None:
    verdict = judge(stats(1), stats(2), BOUNDS, stage_age_ms=DWELT, worker_revisions=[7, 6, None], revision=7)
    assert verdict.action == "hold"
    assert verdict.reasons == ("2 of 3 workers not at revision 7 (at [None, 6])",)
    assert judge(stats(1), stats(2), BOUNDS, stage_age_ms=DWELT, worker_revisions=[], revision=7).action == (
        "hold"
    )
    ready = judge(stats(1), stats(2), BOUNDS, stage_age_ms=DWELT, worker_revisions=[7, 7], revision=7)
    assert ready.action == "advance"
    bad = stats(2, 500, dead={"infer_failed": 500})
    lagging = judge(stats(1), bad, BOUNDS, stage_age_ms=0, worker_revisions=[6], revision=7)
    assert lagging.action == "rollback", "a lagging worker never delays a rollback"


def test_version_stats_merges_the_summaries_since_the_canary_started() -> None:
    def summary(version: int, at_ms: int, *, model: str = "m") -> PartialSummary:
        s = PartialSummary("r", "n", model, version, at_ms)
        for _ in range(10):
            s.add_result(0, 0.9, 12.0)
        s.add_dead_letter("infer_failed")
        s.add_dead_letter("replayed")
        return s

    summaries = [
        summary(2, 999),
        summary(2, 1000),
        summary(2, 1500),
        summary(1, 1500),
        summary(2, 2000, model="x"),
    ]
    v2 = version_stats(summaries, "m", 2, since_ms=1000)
    assert (v2.results, v2.model_errors, v2.requests) == (20, 2, 22)
    assert v2.dead_letters == {"infer_failed": 2, "replayed": 2}
    assert v2.p99_ms == 20.0
    assert version_stats(summaries, "m", 1, since_ms=1000).results == 10


def test_accuracy_joins_samples_with_labels_by_request_id() -> None:
    def sample(rid: bytes, version: int, label: int, at_ms: int = 1000) -> Sample:
        return Sample(rid, "r", "m", version, at_ms, b"d" * 16, (0.0,), label, (1.0,))

    samples = [
        sample(b"a", 1, 0),
        sample(b"b", 1, 1),
        sample(b"c", 2, 0),
        sample(b"c", 2, 0),
        sample(b"d", 2, 0, 5),
    ]
    labels = [Label(b"a", "m", 0, 1), Label(b"b", "m", 0, 1), Label(b"c", "m", 1, 1), Label(b"d", "m", 0, 1)]
    assert accuracy_by_version(samples, labels, "m", since_ms=1000) == {1: (2, 1), 2: (1, 0)}


def test_cli_bounds_parse_over_the_defaults() -> None:
    bounds = parse_bounds("max_error_rate_increase=0.05, min_requests=10,stage_dwell_ms=2m")
    assert (bounds.max_error_rate_increase, bounds.min_requests, bounds.stage_dwell_ms) == (0.05, 10, 120_000)
    assert bounds.max_p99_ratio == 1.5
    with pytest.raises(typer.Exit):
        parse_bounds("no_such_bound=1")
