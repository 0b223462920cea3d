"""``pipeline.json``'s ``tracing`` block: the traced pipeline beside the untraced one, per load and at
the highest load each sustained; absent when the traced pipeline did not run."""

from __future__ import annotations

import pytest

from bench.pipeline.ratios import tracing_summary
from bench.pipeline.results import Level
from tests.bench.pipeline.levels import level, pipeline, run


def _levels(traced: list[tuple[float, float, bool]]) -> list[Level]:
    levels = [level(100, (20, 100, False)), level(1000, (40, 1000, False)), level(2000, (90, 1900, False))]
    for lv, (p99_ms, items_per_s, saturated) in zip(levels, traced, strict=True):
        lv.pipeline_traced = pipeline(run(lv.offered_per_s, p99_ms, items_per_s, saturated=saturated))
    return levels


def test_no_block_without_the_traced_pipeline() -> None:
    assert tracing_summary([level(100, (20, 100, False))], 1.0) is None


def test_the_block_compares_traced_with_untraced_per_load_and_sustained() -> None:
    out = tracing_summary(_levels([(22, 100, False), (50, 1000, False), (400, 1500, True)]), 0.5)
    assert out is not None
    assert out["sample_ratio"] == 0.5
    # traced sustained 1000/s (1000 items/s), untraced 2000/s (1900 items/s)
    assert out["items_per_s_ratio"] == pytest.approx(1000 / 1900)
    assert out["sustained"]["on"]["offered_per_s"] == 1000
    assert out["p99_ms"]["1000"] == pytest.approx({"on": 50, "off": 40, "ratio": 1.25})
    assert out["items_per_s"]["2000"] == pytest.approx({"on": 1500, "off": 1900, "ratio": 1500 / 1900})
    assert out["worker_cpu_ms_per_request"]["100"] == pytest.approx({"on": 0.25, "off": 0.25, "ratio": 1.0})
