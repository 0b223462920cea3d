"""One offered load against one system: a fresh far-side process, a discarded warm-up, the fleet with
each process's CPU counted, the far side catching up, the backlog skipped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from aiokafka import TopicPartition

from bench.peers.settings import Guarantee
from bench.pipeline.context import BenchContext
from bench.pipeline.fleets import EchoFleet, PipelineFleet, fleet_tracing, run_fleet_as
from bench.pipeline.machine import CpuUse, CpuWatch
from bench.pipeline.processes import (
    child_process,
    child_stats,
    echo_env,
    peer_env,
    traces_file,
    worker_env,
    worker_settings,
)
from bench.pipeline.results import Breakdown, EchoRun, Latency, PeerRun, PipelineRun, RunStats
from bench.pipeline.settings import (
    ECHO_GROUP,
    ECHO_REGION,
    PEER_GROUP,
    PEER_REGION,
    PIPELINE_REGION,
    BenchSettings,
)
from bench.profile.window import profile_env, profiled_command
from bench.profile.window import window as profile_window
from edgestream.pipeline import kafka
from edgestream.pipeline.observability.otlpjson import read_spans
from edgestream.pipeline.observability.tracing import Tracing
from edgestream.topics.catalogue import KINDS, edge_group, ingest_topic, parse_topic
from edgestream.workers.local.fleet import Fleet
from edgestream.workers.local.fleetreport import FleetReport

_CLIENT_ID = "edgestream-bench"


def _ingest(region: str) -> list[TopicPartition]:
    """Every partition of the region's ingest topics."""
    topics = [ingest_topic(region, kind) for kind in KINDS]
    return kafka.partitions((topic, parse_topic(topic).spec.partitions) for topic in topics)


async def _lag(ctx: BenchContext, group_id: str, tps: Sequence[TopicPartition]) -> int:
    """Records in ``tps`` past ``group_id``'s committed offsets, in all."""
    return sum((await kafka.consumer_lag(ctx.bootstrap, group_id, tps, client_id=_CLIENT_ID)).values())


async def wait_caught_up(ctx: BenchContext, group_id: str, region: str) -> tuple[int, float]:
    """Wait until the far side has consumed and committed everything sent; (backlog left, seconds)."""
    tps = _ingest(region)
    started_s = time.monotonic()
    while True:
        lag = await _lag(ctx, group_id, tps)
        waited_s = time.monotonic() - started_s
        if lag == 0 or waited_s > ctx.settings.catch_up_timeout_s:
            return lag, waited_s
        await asyncio.sleep(0.25)


async def skip_backlog(ctx: BenchContext, group_id: str, region: str) -> int:
    """Commit the end of the ingest topics for a group nobody is in: the next load starts clean.

    Returns how many records were skipped. Run only after the group's process has stopped.
    """
    tps = _ingest(region)
    lag = await _lag(ctx, group_id, tps)
    if lag == 0:
        return 0
    async with kafka.started(kafka.consumer(ctx.bootstrap, _CLIENT_ID, group_id=group_id)) as consumer:
        consumer.assign(tps)
        await consumer.commit(await consumer.end_offsets(tps))
    return lag


def run_stats(
    rate: float,
    report: FleetReport,
    backlog_left: int,
    catch_up_s: float,
    backlog_skipped: int,
    cpu: CpuUse,
    settings: BenchSettings,
) -> RunStats:
    sla_ms, duration_s = settings.sla_ms, settings.duration_for(rate)
    t = report.totals()
    share = t.results / t.sent if t.sent else 0.0
    latency = Latency.of(t.latencies_ms)
    silence = longest_silence(
        (t_s, lat_ms)
        for region in report.regions.values()
        for t_s, lat_ms in zip(region.result_times_s, region.latencies_ms, strict=True)
    )
    return RunStats(
        offered_per_s=rate,
        sent=t.sent,
        results=t.results,
        answered_share=share,
        fallbacks=t.fallbacks,
        late=t.late,
        send_s=report.send_s,
        sent_per_s=t.sent / report.send_s if report.send_s else 0.0,
        items_per_s=t.results / report.send_s if report.send_s else 0.0,
        latency=latency,
        backlog_left=backlog_left,
        catch_up_s=catch_up_s,
        backlog_skipped=backlog_skipped,
        saturated=share < 0.99 or backlog_left > 0,
        p99_over_sla=latency.p99_ms is None or latency.p99_ms > sla_ms,
        fleet_behind=t.sent < 0.98 * rate * report.send_s or report.send_s > 1.02 * duration_s,
        cpu=cpu,
        cpu_ms_per_request=cpu.ms_per_request(t.sent),
        disturbed=cpu.others_s > 0.1 * report.total_s
        or steal_share(cpu) > settings.max_steal_share
        or jit_share(cpu) > settings.max_broker_jit_share,
        longest_silence_ms=None if silence is None else silence.ms,
        silence_waiting=0 if silence is None else silence.waiting,
        stalled=silence is not None
        and silence.ms > settings.stall_ms
        and silence.waiting >= settings.stall_share * t.results,
    )


class Silence(NamedTuple):
    """The longest time requests waited while no answer at all arrived (`longest_silence`)."""

    ms: float
    """How long it lasted."""
    waiting: int
    """Answered requests waiting when it ended (captured before its end, answered at or after it):
    those of a pause, and those in flight when it began."""


def longest_silence(answers: Iterable[tuple[float, float]]) -> Silence | None:
    """The longest time a request waited while no answer at all arrived, from the answers' ``(arrival
    s, latency ms)``, and how many waited through it; None without answers. A target that keeps
    answering, however late (a queue), keeps it near its answers' latencies, with few waiting through
    it; one that stops (a pause of its process or of the box) leaves the requests of the pause waiting
    together, and this is the pause. Requests never answered (or answered after their deadline) are not
    seen."""
    done = sorted((arrived_s * 1000.0, arrived_s * 1000.0 - latency_ms) for arrived_s, latency_ms in answers)
    if not done:
        return None
    longest, at, oldest_waiting_ms = -1.0, 0, float("inf")
    # Backwards: oldest_waiting_ms is the earliest capture among the answers after the gap, the
    # request that waited longest through it.
    for k in range(len(done) - 1, -1, -1):
        arrived_ms, captured_ms = done[k]
        oldest_waiting_ms = min(oldest_waiting_ms, captured_ms)
        since_ms = max(done[k - 1][0] if k > 0 else float("-inf"), oldest_waiting_ms)
        if arrived_ms - since_ms > longest:
            longest, at = arrived_ms - since_ms, k
    ended_ms = done[at][0]
    return Silence(longest, sum(1 for _, captured_ms in done[at:] if captured_ms < ended_ms))


def steal_share(cpu: CpuUse) -> float:
    """The share of the machine's CPU (its usable cores over the span) the hypervisor stole."""
    capacity_s = len(os.sched_getaffinity(0)) * cpu.wall_s
    return cpu.steal_s / capacity_s if capacity_s > 0 else 0.0


def jit_share(cpu: CpuUse) -> float:
    """The share of one core the broker's JIT compilers used over the span."""
    return cpu.broker_jit_s / cpu.wall_s if cpu.wall_s > 0 else 0.0


def disturbance(run: RunStats) -> float:
    """How disturbed a run was, to keep the least disturbed of repeated runs: CPU seconds others used,
    the hypervisor stole and the broker spent compiling."""
    return run.cpu.others_s + run.cpu.steal_s + run.cpu.broker_jit_s


def span_count(path: Path) -> int:
    """Spans in an OTLP JSON lines file (0 when it was never written)."""
    return len(read_spans(path)) if path.exists() else 0


def batches_from_results(batch_sizes: Iterable[int]) -> tuple[Counter[int], bool]:
    """Batches by size as the results tell them (a batch of k gives k results); exact when all came."""
    per_result = Counter(batch_sizes)
    exact = all(count % size == 0 for size, count in per_result.items())
    return Counter({size: count // size for size, count in per_result.items()}), exact


@dataclass(frozen=True, slots=True)
class FarSide:
    """A system's far side of Kafka: the process to start, and where the fleet talks to it."""

    name: str
    """The process's name (log, ready and stats files)."""
    command: list[str]
    """How to start it."""
    env: Mapping[str, str]
    """Its whole environment."""
    fleet_type: type[Fleet]
    """The fleet that talks to it (what it counts as an answer)."""
    region: str
    """The region whose ingest topics it reads and whose devices it answers."""
    group: str
    """Its consumer group: how far it got, and whose backlog is skipped after the load."""
    tracing: Tracing | None = None
    """The devices' tracing (the traced pipeline); None: untraced."""


@dataclass(frozen=True, slots=True)
class Measured:
    """What one load against one far side gave."""

    warm: Fleet
    """The warm-up's fleet (discarded, but the pipeline takes its batches out of the histogram)."""
    fleet: Fleet
    """The measured fleet."""
    run: RunStats
    """What the measured fleet saw, with the CPU counted meanwhile."""
    stats: dict[str, Any]
    """The far side's stats file, written at its exit."""
    idle_cpu_share: dict[str, float] | None
    """Worker and broker shares of a core with no traffic, when asked for."""


async def idle_cpu_share(ctx: BenchContext, far_side_pid: int) -> dict[str, float]:
    """Shares of one core the far side and the broker use over ``idle_s`` with no traffic (after a
    second for what the last load left to settle)."""
    await asyncio.sleep(1.0)
    watch = CpuWatch({"worker": far_side_pid, "broker": ctx.broker_pid})
    watch.start()
    await asyncio.sleep(ctx.settings.idle_s)
    return watch.stop().core_share()


def profiled(
    s: BenchSettings, name: str, pids: Mapping[str, int]
) -> contextlib.AbstractAsyncContextManager[None]:
    """The profiling window of ``name``'s measured load (``profile_dir``), or nothing."""
    if s.profile_dir is None:
        return contextlib.nullcontext()
    return profile_window(s.profile_dir / name, pids)


def profiled_process(s: BenchSettings, side: FarSide) -> tuple[list[str], Mapping[str, str]]:
    """How to start ``side``: under the sampler where ``profile_dir`` is set (a ``python -m`` command)."""
    command, env = side.command, side.env
    if s.profile_dir is not None and command[1:2] == ["-m"]:
        command = profiled_command(command[2], command[3:])
        env = {**env, **profile_env(s.profile_dir / side.name, "worker")}
    return command, env


async def measure_far_side(ctx: BenchContext, side: FarSide, rate: float, *, idle: bool = False) -> Measured:
    """Start ``side``, warm it up (discarded), offer ``rate`` for ``duration_s`` counting each process's
    CPU, wait for it to catch up unless every request was answered (then, when ``idle``, count its idle
    CPU), stop it, skip what is left."""
    s = ctx.settings
    label = side.name.rpartition("-")[0] or side.name
    command, env = profiled_process(s, side)
    async with child_process(ctx, side.name, command, env) as child:
        warm = await run_fleet_as(
            ctx,
            side.fleet_type,
            side.region,
            s.warmup_rate_per_s,
            s.warmup_s,
            f"{label} warm-up",
            side.tracing,
        )
        pids = {"worker": child.proc.pid, "broker": ctx.broker_pid, "fleet": os.getpid()}
        watch = CpuWatch(pids, jvm_pid=ctx.broker_pid)
        async with profiled(s, side.name, {"worker": pids["worker"], "fleet": pids["fleet"]}):
            watch.start()
            fleet = await run_fleet_as(
                ctx,
                side.fleet_type,
                side.region,
                rate,
                s.duration_for(rate),
                f"{label} @ {rate:g}/s",
                side.tracing,
            )
            cpu = watch.stop()
        totals = fleet.report.totals()
        if totals.results + totals.late >= totals.sent:
            backlog, waited_s = 0, 0.0  # every request answered: nothing was left unconsumed
        else:
            backlog, waited_s = await wait_caught_up(ctx, side.group, side.region)
        idle_share = await idle_cpu_share(ctx, child.proc.pid) if idle and s.idle_s > 0 else None
    skipped = await skip_backlog(ctx, side.group, side.region)
    run = run_stats(rate, fleet.report, backlog, waited_s, skipped, cpu, s)
    return Measured(warm, fleet, run, child_stats(ctx, child), idle_share)


def pipeline_side(ctx: BenchContext, name: str, tracing: Tracing | None = None) -> FarSide:
    """The pipeline's far side: a worker process called ``name``, traced where ``tracing`` is given."""
    return FarSide(
        name,
        [sys.executable, "-m", "edgestream", "worker"],
        worker_env(ctx, name, worker_settings(ctx, name), traced=tracing is not None),
        PipelineFleet,
        PIPELINE_REGION,
        edge_group(PIPELINE_REGION),
        tracing,
    )


async def warm_pipeline(ctx: BenchContext, rate: float) -> RunStats:
    """A pipeline at ``rate`` whose numbers are thrown away (the broker's warm-up): what it measured."""
    return (await measure_far_side(ctx, pipeline_side(ctx, "worker-warmup"), rate)).run


async def measure_pipeline(
    ctx: BenchContext, rate: float, *, idle: bool = False, traced: bool = False
) -> PipelineRun:
    """The pipeline at ``rate``: a fresh worker; with ``idle``, its idle CPU after the load too; with
    ``traced``, devices and worker exporting spans to files (``trace_sample_ratio`` sampled)."""
    name = f"worker-{'traced-' if traced else ''}{rate:g}"
    fleet_traces = ctx.run_dir / f"fleet-{name}.traces.jsonl"
    side = pipeline_side(
        ctx, name, fleet_tracing(fleet_traces, ctx.settings.trace_sample_ratio) if traced else None
    )
    try:
        m = await measure_far_side(ctx, side, rate, idle=idle)
    finally:
        if side.tracing is not None:
            side.tracing.shutdown()
    spans = (
        {"worker": span_count(traces_file(ctx, name)), "fleet": span_count(fleet_traces)} if traced else None
    )
    assert isinstance(m.fleet, PipelineFleet)
    worker = m.stats
    warm_totals = m.warm.report.totals()
    warm_batches, warm_exact = batches_from_results(warm_totals.batch_sizes)
    warm_exact = warm_exact and warm_totals.results == warm_totals.sent
    histogram = Counter({int(k): int(v) for k, v in worker.get("batch_sizes", {}).items()})
    histogram.subtract(warm_batches)
    exact = warm_exact and all(v >= 0 for v in histogram.values())
    totals = m.fleet.report.totals()
    timings = m.fleet.timings
    by_model: dict[str, dict[str, float]] = {}
    for model in sorted({t.model for t in timings}):
        sizes = [t.batch_size for t in timings if t.model == model]
        by_model[model] = {"share": len(sizes) / len(timings), "mean_batch": float(np.mean(sizes))}
    return PipelineRun(
        run=m.run,
        mean_batch=float(np.mean(totals.batch_sizes)) if totals.batch_sizes else None,
        batch_histogram={str(k): v for k, v in sorted(histogram.items()) if v > 0},
        histogram_exact=exact,
        by_model=by_model,
        breakdown=Breakdown(
            to_worker=Latency.of([t.to_worker_ms for t in timings]),
            batch_wait=Latency.of([t.queue_ms for t in timings]),
            infer=Latency.of([t.infer_ms for t in timings]),
            to_device=Latency.of([t.to_device_ms for t in timings]),
        ),
        worker={k: v for k, v in worker.items() if k not in ("node", "region")},
        idle_cpu_share=m.idle_cpu_share,
        spans=spans,
    )


def echo_side(ctx: BenchContext, name: str, *, transactional: bool) -> FarSide:
    """The echo's far side: a process called ``name``, in transactions or acknowledged then committed."""
    return FarSide(
        name,
        [sys.executable, "-m", "bench.pipeline", "echo"],
        echo_env(ctx, name, transactional=transactional),
        EchoFleet,
        ECHO_REGION,
        ECHO_GROUP,
    )


def peer_side(ctx: BenchContext, name: str, guarantee: Guarantee) -> FarSide:
    """The Quix Streams peer's far side: a process called ``name`` under ``guarantee``."""
    return FarSide(
        name,
        [sys.executable, "-m", "bench.pipeline", "peer"],
        peer_env(ctx, name, guarantee),
        Fleet,
        PEER_REGION,
        PEER_GROUP,
    )


async def measure_echo(ctx: BenchContext, rate: float, *, transactional: bool) -> EchoRun:
    """The echo at ``rate``, in transactions or acknowledged then committed."""
    m = await measure_far_side(
        ctx,
        echo_side(ctx, f"echo-{'eos' if transactional else 'alo'}-{rate:g}", transactional=transactional),
        rate,
    )
    since_ms = m.fleet.report.started_at * 1000.0
    one_hop = [float(ms) for ts, ms in m.stats.get("one_hop", []) if ts >= since_ms]
    return EchoRun(run=m.run, one_hop=Latency.of(one_hop), echoed=int(m.stats.get("echoed", 0)))


async def measure_peer(ctx: BenchContext, rate: float, guarantee: Guarantee) -> PeerRun:
    """The Quix Streams peer at ``rate`` under ``guarantee``."""
    name = f"peer-{'eos' if guarantee == 'exactly_once' else 'alo'}-{rate:g}"
    m = await measure_far_side(ctx, peer_side(ctx, name, guarantee), rate)
    refused = {str(k): int(v) for k, v in m.stats.get("refused", {}).items()}
    return PeerRun(
        run=m.run,
        answered=int(m.stats.get("answered", 0)),
        refused=refused,
        infer_s=float(m.stats.get("infer_s", 0.0)),
    )
