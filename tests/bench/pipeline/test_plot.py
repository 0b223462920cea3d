"""``pipeline.png`` from ``pipeline.json``: every system that ran on the same axes, any subset drawn."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.pipeline.capacity import DrainRun
from bench.pipeline.plot import plot, systems_in
from bench.pipeline.results import FloorPoint
from bench.pipeline.run import BenchResult
from bench.pipeline.settings import BenchSettings, System
from tests.bench.pipeline.levels import drain, echo, level, peer, run


def _document(systems: tuple[System, ...], capacity: dict[str, DrainRun] | None = None) -> dict[str, Any]:
    levels = [
        level(100, (20, 100, False), echo_alo=(10, 100, False), peer_alo=(40, 100, False)),
        level(1000, (60, 990, True), echo_alo=(30, 1000, False), peer_alo=(30, 1000, False)),
    ]
    for lv in levels:
        r = run(lv.offered_per_s, 200, lv.offered_per_s)
        lv.echo_eos, lv.peer_eos = echo(r), peer(r)
        for system in ("echo_alo", "echo_eos", "peer_alo", "peer_eos"):
            if system not in systems:
                setattr(lv, system, None)
    result = BenchResult(
        timestamp="2026-12-03T12:00:00+00:00",
        wall_s=1.0,
        machine={"cores": 2},
        code={},
        worker={"delivery": "exactly_once", "max_batch": 64},
        levels=levels,
        floor={"embedding-scorer": [FloorPoint(1, 10, 5.0, 6.0, 5.0, 6.0)]},
        peer_name="quixstreams 9.9",
        capacity=capacity or {},
    )
    document: dict[str, Any] = json.loads(json.dumps(result.to_json(BenchSettings(systems=systems))))
    return document


@pytest.mark.parametrize(
    "systems",
    [("pipeline", "echo_alo", "echo_eos", "peer_alo", "peer_eos"), ("pipeline", "echo_alo"), ("pipeline",)],
)
def test_the_plot_draws_the_systems_that_ran(tmp_path: Path, systems: tuple[System, ...]) -> None:
    document = _document(systems)
    assert systems_in(document["levels"]) == list(systems)
    plot(document, tmp_path / "pipeline.png")
    assert (tmp_path / "pipeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_plot_adds_the_capacity_panel_where_drains_ran(tmp_path: Path) -> None:
    without = _document(("pipeline", "peer_eos"))
    assert without["capacity"] is None
    document = _document(("pipeline", "peer_eos"), {"pipeline": drain(9000.0), "peer_eos": drain(6000.0)})
    assert document["capacity"]["pipeline_vs"] == {"peer_eos": 1.5}
    plot(without, tmp_path / "three.png")
    plot(document, tmp_path / "four.png")

    def width(name: str) -> int:  # a PNG's width: the IHDR chunk's first field
        return int.from_bytes((tmp_path / name).read_bytes()[16:20], "big")

    assert width("four.png") > width("three.png")  # four panels side by side: wider than three
