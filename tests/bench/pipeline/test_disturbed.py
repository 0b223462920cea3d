"""A load measured while the hypervisor stole CPU is disturbed, run again, and the least disturbed run
kept: steal explained this box's run-to-run spread."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest

from bench.pipeline import run as bench_run
from bench.pipeline.machine import CpuUse
from bench.pipeline.measure import disturbance, jit_share, run_stats, steal_share
from bench.pipeline.settings import BenchSettings
from edgestream.workers.local.fleetreport import FleetReport

from .levels import echo, run


def _cpu(steal_s: float, wall_s: float = 10.0) -> CpuUse:
    return CpuUse(ours_s=1.0, others_s=0.0, steal_s=steal_s, processes_s={"worker": 1.0}, wall_s=wall_s)


def test_steal_over_its_share_of_the_machine_makes_a_load_disturbed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1})
    assert steal_share(_cpu(steal_s=2.0)) == pytest.approx(0.1)  # 2 s of 2 cores x 10 s
    settings = BenchSettings(max_steal_share=0.05)
    report = FleetReport(regions={}, started_at=0.0, send_s=10.0, total_s=10.0, unanswered=0)
    calm = run_stats(100.0, report, 0, 0.0, 0, _cpu(steal_s=0.5), settings)
    stolen = run_stats(100.0, report, 0, 0.0, 0, _cpu(steal_s=2.0), settings)
    assert (calm.disturbed, stolen.disturbed) == (False, True)


def _stolen(steal_s: float) -> Any:
    r = run(100.0, 10.0, 100.0)
    return echo(replace(r, cpu=replace(r.cpu, steal_s=steal_s), disturbed=steal_s > 1.0))


@pytest.mark.parametrize(
    ("steals", "retries", "kept", "attempts"),
    [
        ([0.0], 2, 0.0, 1),  # calm: measured once
        ([3.0, 2.0, 0.5], 2, 0.5, 3),  # disturbed twice, calm the third time
        ([3.0, 2.0, 4.0], 2, 2.0, 3),  # always disturbed: the least disturbed of the three
        ([3.0, 0.0], 0, 3.0, 1),  # no retries allowed
    ],
)
async def test_a_disturbed_load_is_measured_again_and_the_least_disturbed_run_kept(
    monkeypatch: pytest.MonkeyPatch, steals: list[float], retries: int, kept: float, attempts: int
) -> None:
    queue = [_stolen(s) for s in steals]

    async def measure(*_args: Any) -> Any:
        return queue.pop(0)

    monkeypatch.setattr(bench_run, "_measure", measure)
    ctx: Any = SimpleNamespace(
        settings=BenchSettings(disturbed_retries=retries), ui=SimpleNamespace(step=lambda _m: None)
    )
    result = await bench_run._measure_undisturbed(ctx, "echo_alo", 100.0, False)
    assert (result.run.cpu.steal_s, result.run.attempts) == (kept, attempts)


def test_a_broker_still_compiling_makes_a_load_disturbed_and_counts_in_its_disturbance() -> None:
    settings = BenchSettings(max_broker_jit_share=0.05)  # not the default: the maths at one limit
    report = FleetReport(regions={}, started_at=0.0, send_s=10.0, total_s=10.0, unanswered=0)
    quiet = run_stats(100.0, report, 0, 0.0, 0, replace(_cpu(steal_s=0.0), broker_jit_s=0.4), settings)
    compiling = run_stats(100.0, report, 0, 0.0, 0, replace(_cpu(steal_s=0.0), broker_jit_s=0.6), settings)
    assert jit_share(compiling.cpu) == pytest.approx(0.06)  # 0.6 s of one core over 10 s
    assert (quiet.disturbed, compiling.disturbed) == (False, True)
    assert disturbance(compiling) > disturbance(quiet)
