"""Synthetic bench levels for the tests: every field filled, only what a test varies given."""

from __future__ import annotations

from bench.pipeline.capacity import DrainRun
from bench.pipeline.machine import CpuUse
from bench.pipeline.results import Breakdown, EchoRun, Latency, Level, PeerRun, PipelineRun, RunStats

NO_LATENCY = Latency(None, None, None)


def run(offered: float, p99_ms: float | None, items_per_s: float, *, saturated: bool = False) -> RunStats:
    """A run at ``offered`` with this p99 and throughput (1,000 requests sent, 1.5 s of CPU)."""
    cpu = CpuUse(
        ours_s=1.5,
        others_s=0.0,
        steal_s=0.0,
        processes_s={"worker": 0.25, "broker": 1.0, "fleet": 0.25},
        wall_s=10.0,
    )
    return RunStats(
        offered_per_s=offered,
        sent=1000,
        results=1000,
        answered_share=0.9 if saturated else 1.0,
        fallbacks=0,
        late=0,
        send_s=10.0,
        sent_per_s=offered,
        items_per_s=items_per_s,
        latency=Latency(None if p99_ms is None else p99_ms / 2, p99_ms, p99_ms),
        backlog_left=0,
        catch_up_s=0.0,
        backlog_skipped=0,
        saturated=saturated,
        p99_over_sla=p99_ms is None or p99_ms > 50,
        fleet_behind=False,
        cpu=cpu,
        cpu_ms_per_request=cpu.ms_per_request(1000),
        disturbed=False,
    )


def pipeline(r: RunStats, *, idle: dict[str, float] | None = None) -> PipelineRun:
    """The pipeline's record of ``r``."""
    return PipelineRun(
        run=r,
        mean_batch=4.0,
        batch_histogram={"4": 10},
        histogram_exact=True,
        by_model={"embedding-scorer": {"share": 1.0, "mean_batch": 4.0}},
        breakdown=Breakdown(NO_LATENCY, NO_LATENCY, NO_LATENCY, NO_LATENCY),
        worker={},
        idle_cpu_share=idle,
    )


def echo(r: RunStats) -> EchoRun:
    """The echo's record of ``r``."""
    return EchoRun(run=r, one_hop=Latency(2.0, 3.0, 4.0), echoed=1000)


def peer(r: RunStats) -> PeerRun:
    """The peer's record of ``r``."""
    return PeerRun(run=r, answered=1000, refused={}, infer_s=0.1)


def level(
    offered: float,
    pipe: tuple[float, float, bool],
    echo_alo: tuple[float, float, bool] | None = None,
    peer_alo: tuple[float, float, bool] | None = None,
    peer_eos: tuple[float, float, bool] | None = None,
) -> Level:
    """A level from (p99 ms, items/s, saturated) per system; a system not given did not run."""

    def stats(values: tuple[float, float, bool]) -> RunStats:
        return run(offered, values[0], values[1], saturated=values[2])

    return Level(
        offered,
        pipeline(stats(pipe)),
        echo_alo=echo(stats(echo_alo)) if echo_alo else None,
        peer_alo=peer(stats(peer_alo)) if peer_alo else None,
        peer_eos=peer(stats(peer_eos)) if peer_eos else None,
    )


def drain(items_per_s: float | None, *, complete: bool = True) -> DrainRun:
    """A drain of 1,000 requests at ``items_per_s`` (None: nothing answered)."""
    cpu = CpuUse(ours_s=1.0, others_s=0.0, steal_s=0.0, processes_s={"worker": 1.0}, wall_s=2.0)
    return DrainRun(
        backlog=1000,
        sent_per_s=8000.0,
        stopped_s=0.2,
        answered=1000 if complete else 900,
        complete=complete,
        first_answer_ms=5.0,
        drain_s=None if items_per_s is None else 1000 / items_per_s,
        items_per_s=items_per_s,
        cpu=cpu,
        cpu_ms_per_item=cpu.ms_per_request(1000),
        disturbed=False,
        far_side_main_thread={"running": 0.5, "waiting_for_cpu": 0.1},
    )
