"""Capacity by backlog drain: how many items a second each system's far side answers when a backlog
is waiting for it, with the fleet out of its way.

Why: under an offered load the fleet shares the box's two cores with what it measures. At 8,000/s
offered it could send each system only what CPU that system left it, every system answered all it was
sent, and "the highest load sustained" could not tell which system can do more. Here the far side is
started and warmed up as for a load, then stopped with SIGSTOP (it keeps its partitions, its group
membership and its connections: the stop lasts about ``capacity_backlog / capacity_send_rate_per_s``
seconds, well inside the 10 s session timeout of our consumers and the peer's 45 s), the fleet sends
``capacity_backlog`` requests, the far side is resumed and the fleet waits for every answer:
``items_per_s`` is the answers over the time from the resume to the last answer. The fleet still reads
and opens every answer meanwhile, as devices do; its CPU is counted beside the far side's and the
broker's. Each device's share of the backlog stays under the worker's per-device burst, so nothing is
rate-limited.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import time
from asyncio import FIRST_COMPLETED
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bench.pipeline.context import BenchContext
from bench.pipeline.fleets import fleet_settings, run_fleet_as
from bench.pipeline.machine import CpuUse, CpuWatch, main_thread_schedstat
from bench.pipeline.measure import (
    FarSide,
    echo_side,
    peer_side,
    pipeline_side,
    profiled,
    profiled_process,
    skip_backlog,
    steal_share,
    wait_caught_up,
)
from bench.pipeline.processes import child_process
from bench.pipeline.ratios import ratio
from bench.pipeline.settings import System
from edgestream.workers.local.fleet_settings import FleetSettings

MAX_BACKLOG_PER_DEVICE = 40
"""Most backlog requests one device sends: under the worker's per-device burst (100 by default), so
the worker's rate limit, which counts arrivals at the worker, refuses none of them in the drain."""


@dataclass(frozen=True, slots=True)
class DrainRun:
    """One system's drain of a backlog."""

    backlog: int
    """Requests the fleet sent while the far side was stopped."""
    sent_per_s: float
    """How fast the fleet sent them."""
    stopped_s: float
    """How long the far side was stopped."""
    answered: int
    """Answers the fleet received after the resume."""
    complete: bool
    """Every request of the backlog was answered."""
    first_answer_ms: float | None
    """Resume -> first answer."""
    drain_s: float | None
    """Resume -> last answer."""
    items_per_s: float | None
    """answered / drain_s: the far side's capacity, with the box to itself and the fleet reading."""
    cpu: CpuUse
    """CPU from the resume until the fleet stopped waiting, per process."""
    cpu_ms_per_item: dict[str, float] | None
    """CPU ms per answer, by process (``worker``: the far side)."""
    disturbed: bool
    """Other processes used more than 10% of one core, or the hypervisor stole more than
    ``max_steal_share`` of the machine, during the drain."""
    far_side_main_thread: dict[str, float]
    """The far side's main thread (its event loop, or the peer's poll loop) over the drain, as shares
    of the wall: ``running``, and ``waiting_for_cpu`` (runnable, on the run queue). Running near 1, the
    loop is the bottleneck; waiting a lot, the box was short of cores."""


def per_device_devices(backlog: int, at_least: int) -> int:
    """How many devices send a backlog so that none sends more than ``MAX_BACKLOG_PER_DEVICE``."""
    return max(at_least, math.ceil(backlog / MAX_BACKLOG_PER_DEVICE))


def drain_fleet_settings(ctx: BenchContext, region: str) -> FleetSettings:
    """The fleet that sends the backlog: at ``capacity_send_rate_per_s``, devices enough to stay under
    the worker's per-device burst, a deadline and a wait long enough that no answer is a fallback."""
    s = ctx.settings
    rate = s.capacity_send_rate_per_s
    base = fleet_settings(ctx, region, rate, s.capacity_backlog / rate)
    return base.model_copy(
        update={
            "devices": per_device_devices(s.capacity_backlog, base.devices),
            "deadline_ms": s.capacity_answer_timeout_s * 1000.0,
            "drain_s": s.capacity_answer_timeout_s,
        }
    )


def drain_times(result_times_s: Sequence[float], resumed_s: float) -> tuple[float | None, float | None]:
    """(first, last) answer after ``resumed_s``, in seconds from it, over answers' times (all on the
    fleet report's clock); None without answers."""
    after = [t - resumed_s for t in result_times_s]
    if not after:
        return None, None
    return min(after), max(after)


async def drain_far_side(ctx: BenchContext, side: FarSide) -> DrainRun:
    """Start ``side``, warm it up, stop it, send the backlog, resume it, wait for every answer."""
    s = ctx.settings
    label = side.name.rpartition("-")[0] or side.name
    command, env = profiled_process(s, side)
    async with child_process(ctx, side.name, command, env) as child, contextlib.AsyncExitStack() as stack:
        await run_fleet_as(
            ctx, side.fleet_type, side.region, s.warmup_rate_per_s, s.warmup_s, f"{label} warm-up"
        )
        await wait_caught_up(ctx, side.group, side.region)
        pid = child.proc.pid
        fleet = side.fleet_type(drain_fleet_settings(ctx, side.region), ctx.keyring)
        watch = CpuWatch({"worker": pid, "broker": ctx.broker_pid, "fleet": os.getpid()}, ctx.broker_pid)
        sent = asyncio.Event()
        os.kill(pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            progress = ctx.ui.fleet(f"{label}: backlog, then its drain", fleet.settings.duration_s)
            running = asyncio.create_task(fleet.run(progress, sent=sent))
            waiting = asyncio.create_task(sent.wait())
            await asyncio.wait([running, waiting], return_when=FIRST_COMPLETED)
            waiting.cancel()
            await stack.enter_async_context(profiled(s, side.name, {"worker": pid, "fleet": os.getpid()}))
            watch.start()
            sched_before = main_thread_schedstat(pid)
        finally:
            os.kill(pid, signal.SIGCONT)  # whatever happened: a stopped process could not be stopped
        resumed_s = time.time() - fleet.report.started_at
        stopped_s = time.monotonic() - stopped_at
        report = await running
        cpu = watch.stop()
        sched_after = main_thread_schedstat(pid)
        await stack.aclose()
        ctx.ui.end_fleet()
    await skip_backlog(ctx, side.group, side.region)
    totals = report.totals()
    times = [t for region in report.regions.values() for t in region.result_times_s]
    first_s, last_s = drain_times(times, resumed_s)
    items_per_s = totals.results / last_s if last_s else None
    return DrainRun(
        backlog=totals.sent,
        sent_per_s=totals.sent / report.send_s if report.send_s else 0.0,
        stopped_s=stopped_s,
        answered=totals.results,
        complete=totals.results >= totals.sent,
        first_answer_ms=None if first_s is None else first_s * 1000.0,
        drain_s=last_s,
        items_per_s=items_per_s,
        cpu=cpu,
        cpu_ms_per_item=cpu.ms_per_request(totals.results),
        disturbed=cpu.others_s > 0.1 * cpu.wall_s or steal_share(cpu) > s.max_steal_share,
        far_side_main_thread={
            "running": (sched_after[0] - sched_before[0]) / 1e9 / cpu.wall_s if cpu.wall_s else 0.0,
            "waiting_for_cpu": (sched_after[1] - sched_before[1]) / 1e9 / cpu.wall_s if cpu.wall_s else 0.0,
        },
    )


def drain_side(ctx: BenchContext, system: System) -> FarSide | None:
    """The far side whose drain is measured for ``system``; None for the traced pipeline (tracing's
    cost is measured under load, beside the untraced one)."""
    name = f"{system.replace('_', '-')}-drain"
    if system == "pipeline":
        return pipeline_side(ctx, name)
    if system in ("echo_alo", "echo_eos"):
        return echo_side(ctx, name, transactional=system == "echo_eos")
    if system in ("peer_alo", "peer_eos"):
        return peer_side(ctx, name, "exactly_once" if system == "peer_eos" else "at_least_once")
    return None


async def measure_capacity(ctx: BenchContext) -> dict[str, DrainRun]:
    """Every chosen system's drain of ``capacity_backlog`` requests (none when it is 0)."""
    s = ctx.settings
    drains: dict[str, DrainRun] = {}
    if s.capacity_backlog <= 0:
        return drains
    for system in s.systems:
        side = drain_side(ctx, system)
        if side is None:
            continue
        ctx.ui.step(f"capacity: {system} drains a backlog of {s.capacity_backlog:,}")
        drains[system] = run = await drain_far_side(ctx, side)
        rate = "-" if run.items_per_s is None else f"{run.items_per_s:.0f}"
        ctx.ui.step(
            f"  {system}: {rate} items/s, {run.answered:,} of {run.backlog:,} answered "
            f"(stopped {run.stopped_s:.1f} s)"
        )
    return drains


def capacity_summary(drains: dict[str, DrainRun], backlog: int, send_rate_per_s: float) -> dict[str, Any]:
    """``pipeline.json``'s ``capacity``: the backlog, each system's drain, its items/s, and the
    pipeline's items/s over each other system's (None where either drained nothing)."""
    items = {system: run.items_per_s for system, run in drains.items()}
    pipeline = items.get("pipeline")
    return {
        "backlog": backlog,
        "send_rate_per_s": send_rate_per_s,
        "items_per_s": items,
        "pipeline_vs": {
            system: ratio(pipeline, value) for system, value in items.items() if system != "pipeline"
        },
        "complete": {system: run.complete for system, run in drains.items()},
        "drains": {system: asdict(run) for system, run in drains.items()},
    }
