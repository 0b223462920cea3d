"""One offered load against one target: the fleet, the far side catching up, the backlog skipped."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
from aiokafka import TopicPartition

from bench.pipeline.context import BenchContext
from bench.pipeline.fleets import EchoFleet, PipelineFleet, run_fleet_as
from bench.pipeline.machine import CpuUse, CpuWatch
from bench.pipeline.processes import child_process, child_stats, echo_env, worker_env, worker_settings
from bench.pipeline.results import Breakdown, EchoRun, Latency, PipelineRun, RunStats
from bench.pipeline.settings import ECHO_GROUP, ECHO_REGION, PIPELINE_REGION, BenchSettings
from edgestream.pipeline import kafka
from edgestream.topics.catalogue import KINDS, edge_group, ingest_topic, parse_topic
from edgestream.workers.local.fleet import FleetReport

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
    sla_ms, duration_s = settings.sla_ms, settings.duration_s
    t = report.totals()
    share = t.results / t.sent if t.sent else 0.0
    latency = Latency.of(t.latencies_ms)
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
        disturbed=cpu.others_s > 0.1 * report.total_s,
    )


def batches_from_results(batch_sizes: Iterable[int]) -> tuple[Counter[int], bool]:
    """Batches by size as the results tell them (a batch of k gives k results); exact when all came."""
    per_result = Counter(batch_sizes)
    exact = all(count % size == 0 for size, count in per_result.items())
    return Counter({size: count // size for size, count in per_result.items()}), exact


async def measure_pipeline(ctx: BenchContext, rate: float) -> PipelineRun:
    s = ctx.settings
    name = f"worker-{rate:g}"
    command = [sys.executable, "-m", "edgestream", "worker"]
    env = worker_env(ctx, name, worker_settings(ctx, name))
    async with child_process(ctx, name, command, env) as child:
        warm = await run_fleet_as(
            ctx, PipelineFleet, PIPELINE_REGION, s.warmup_rate_per_s, s.warmup_s, "pipeline warm-up"
        )
        watch = CpuWatch([os.getpid(), child.proc.pid, ctx.broker_pid])
        watch.start()
        fleet = await run_fleet_as(
            ctx, PipelineFleet, PIPELINE_REGION, rate, s.duration_s, f"pipeline @ {rate:g}/s"
        )
        cpu = watch.stop()
        backlog, waited_s = await wait_caught_up(ctx, edge_group(PIPELINE_REGION), PIPELINE_REGION)
    skipped = await skip_backlog(ctx, edge_group(PIPELINE_REGION), PIPELINE_REGION)
    worker = child_stats(ctx, child)
    warm_totals = warm.report.totals()
    warm_batches, warm_exact = batches_from_results(warm_totals.batch_sizes)
    warm_exact = warm_exact and warm_totals.results == warm_totals.sent
    histogram = Counter({int(k): int(v) for k, v in worker.get("batch_sizes", {}).items()})
    histogram.subtract(warm_batches)
    exact = warm_exact and all(v >= 0 for v in histogram.values())
    totals = fleet.report.totals()
    by_model: dict[str, dict[str, float]] = {}
    for model in sorted({t.model for t in fleet.timings}):
        sizes = [t.batch_size for t in fleet.timings if t.model == model]
        by_model[model] = {"share": len(sizes) / len(fleet.timings), "mean_batch": float(np.mean(sizes))}
    timings = fleet.timings
    return PipelineRun(
        run=run_stats(rate, fleet.report, backlog, waited_s, skipped, cpu, s),
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
    )


async def measure_echo(ctx: BenchContext, rate: float) -> EchoRun:
    s = ctx.settings
    name = f"echo-{rate:g}"
    command = [sys.executable, "-m", "bench.pipeline", "echo"]
    async with child_process(ctx, name, command, echo_env(ctx, name)) as child:
        await run_fleet_as(ctx, EchoFleet, ECHO_REGION, s.warmup_rate_per_s, s.warmup_s, "echo warm-up")
        watch = CpuWatch([os.getpid(), child.proc.pid, ctx.broker_pid])
        watch.start()
        fleet = await run_fleet_as(ctx, EchoFleet, ECHO_REGION, rate, s.duration_s, f"echo @ {rate:g}/s")
        cpu = watch.stop()
        backlog, waited_s = await wait_caught_up(ctx, ECHO_GROUP, ECHO_REGION)
    skipped = await skip_backlog(ctx, ECHO_GROUP, ECHO_REGION)
    stats = child_stats(ctx, child)
    since_ms = fleet.report.started_at * 1000.0
    one_hop = [float(ms) for ts, ms in stats.get("one_hop", []) if ts >= since_ms]
    return EchoRun(
        run=run_stats(rate, fleet.report, backlog, waited_s, skipped, cpu, s),
        one_hop=Latency.of(one_hop),
        echoed=int(stats.get("echoed", 0)),
    )
