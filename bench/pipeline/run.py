"""The whole run: a home, a broker, every load for every system, bare onnxruntime, the ratios."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.gpu.measure import gpu_block
from bench.peers.settings import PEER_PACKAGE, Guarantee
from bench.pipeline.capacity import DrainRun, capacity_summary, measure_capacity
from bench.pipeline.context import BenchContext, Ui
from bench.pipeline.fleets import EchoFleet, run_fleet_as
from bench.pipeline.floor import onnx_floor
from bench.pipeline.machine import (
    code_facts,
    foreign_processes,
    jit_seconds,
    jit_thread_ticks,
    machine_facts,
    wake_penalty,
)
from bench.pipeline.measure import (
    disturbance,
    jit_share,
    measure_echo,
    measure_peer,
    measure_pipeline,
    steal_share,
    wait_caught_up,
    warm_pipeline,
)
from bench.pipeline.processes import (
    child_process,
    echo_env,
    peer_commit_interval_s,
    worker_delivery,
    worker_settings,
)
from bench.pipeline.ratios import level_ratios, peer_summary, per_load, summary, tracing_summary
from bench.pipeline.report import fmt
from bench.pipeline.results import EchoRun, FloorPoint, Level, PeerRun, PipelineRun, RunStats
from bench.pipeline.settings import (
    ECHO_GROUP,
    ECHO_REGION,
    PEER_REGION,
    PIPELINE_REGION,
    BenchSettings,
    System,
)
from edgestream.pipeline import eventloop
from edgestream.pipeline.models import ModelStore
from edgestream.pipeline.security import keyfile
from edgestream.pipeline.security.keyring import KeyRing
from edgestream.topics.acl_admin import apply_policy
from edgestream.topics.admin import ensure_topics
from edgestream.topics.catalogue import all_topics
from edgestream.workers.edge.settings import WorkerSettings
from edgestream.workers.local.broker.process import running_broker
from edgestream.workers.local.broker.settings import BrokerSettings
from edgestream.workers.local.fleet_settings import MODEL_FOR_KIND

log = logging.getLogger(__name__)


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


async def warm_broker(ctx: BenchContext) -> dict[str, Any]:
    """Traffic that is thrown away, so the broker's JVM has compiled the hot paths of every system's
    requests before the first load: the echo in transactions and without (markers, offset commits),
    then a pipeline (group-fenced transactional offsets, results, audit and cloud records); then a wait
    for the JIT compilers to go quiet. What the warm-up took, for ``pipeline.json``."""
    s = ctx.settings
    if s.broker_warmup_s <= 0:
        return {}
    started_s = time.monotonic()
    jit_before = jit_thread_ticks(ctx.broker_pid)
    command = [sys.executable, "-m", "bench.pipeline", "echo"]
    for transactional in (True, False):
        kind = "in transactions" if transactional else "acknowledged"
        ctx.ui.step(
            f"warming the broker up, {kind}: {s.broker_warmup_rate_per_s:g}/s for "
            f"{s.broker_warmup_s:g} s (discarded)"
        )
        env = echo_env(ctx, "echo-warmup", transactional=transactional)
        async with child_process(ctx, "echo-warmup", command, env):
            await run_fleet_as(
                ctx, EchoFleet, ECHO_REGION, s.broker_warmup_rate_per_s, s.broker_warmup_s, "broker warm-up"
            )
            await wait_caught_up(ctx, ECHO_GROUP, ECHO_REGION)
    document: dict[str, Any] = {}
    for rate in pipeline_warmup_rates(s):
        ctx.ui.step(f"warming the broker up, a pipeline: {rate:g}/s (discarded)")
        run = await warm_pipeline(ctx, rate)
        document.setdefault("pipeline", []).append(
            {"offered_per_s": run.offered_per_s, "answered_share": run.answered_share}
        )
    settled_s, quiet = await settle_jit(ctx)
    document |= {
        "wall_s": time.monotonic() - started_s,
        "broker_jit_s": jit_seconds(jit_before, jit_thread_ticks(ctx.broker_pid)),
        "jit_settle_s": settled_s,
        "jit_quiet": quiet,
    }
    return document


def pipeline_warmup_rates(s: BenchSettings) -> list[float]:
    """The loads of the discarded pipelines of the warm-up, in order: ``pipeline_warmup_rate_per_s``,
    then the first load's rate when ``warm_first_load`` and it differs (none at 0)."""
    rates = [s.pipeline_warmup_rate_per_s] if s.pipeline_warmup_rate_per_s > 0 else []
    first = s.loads_per_s[0] if s.loads_per_s else None
    if s.warm_first_load and first is not None and first not in rates:
        rates.append(first)
    return rates


async def settle_jit(ctx: BenchContext) -> tuple[float, bool]:
    """Wait until the broker's JIT compilers use at most ``jit_quiet_share`` of a core over
    ``jit_quiet_window_s``, at most ``jit_settle_timeout_s``: (seconds waited, whether they went quiet)."""
    s = ctx.settings
    started_s = time.monotonic()
    ctx.ui.step("waiting for the broker's JIT compilers to go quiet")
    while True:
        before = jit_thread_ticks(ctx.broker_pid)
        await asyncio.sleep(s.jit_quiet_window_s)
        share = jit_seconds(before, jit_thread_ticks(ctx.broker_pid)) / s.jit_quiet_window_s
        waited_s = time.monotonic() - started_s
        if share <= s.jit_quiet_share:
            return waited_s, True
        if waited_s >= s.jit_settle_timeout_s:
            log.warning(
                "the broker's JIT compilers still use %.0f%% of a core after %.0f s", 100 * share, waited_s
            )
            return waited_s, False


def _measure(
    ctx: BenchContext, system: System, rate: float, first: bool
) -> Awaitable[PipelineRun | EchoRun | PeerRun]:
    """The measurement of ``system`` at ``rate`` (the pipeline's idle CPU after the first load)."""
    if system in ("pipeline", "pipeline_traced"):
        traced = system == "pipeline_traced"
        return measure_pipeline(ctx, rate, idle=first and not traced, traced=traced)
    if system in ("echo_alo", "echo_eos"):
        return measure_echo(ctx, rate, transactional=system == "echo_eos")
    return measure_peer(ctx, rate, "exactly_once" if system == "peer_eos" else "at_least_once")


async def _measure_undisturbed(
    ctx: BenchContext, system: System, rate: float, first: bool
) -> PipelineRun | EchoRun | PeerRun:
    """``_measure``, run again while disturbed (other processes, the hypervisor's steal), at most
    ``disturbed_retries`` more times; the least disturbed run, with the runs it took."""
    runs = [await _measure(ctx, system, rate, first)]
    while runs[-1].run.disturbed and len(runs) <= ctx.settings.disturbed_retries:
        ctx.ui.step(f"  {system} at {rate:g}/s disturbed ({_disturbed(runs[-1].run)}): again")
        runs.append(await _measure(ctx, system, rate, first))
    best = min(runs, key=lambda r: disturbance(r.run))
    return replace(best, run=replace(best.run, attempts=len(runs)))


def _disturbed(run: RunStats) -> str:
    return (
        f"steal {steal_share(run.cpu):.0%} of the machine, others {run.cpu.others_s:.1f} s CPU, "
        f"broker JIT {jit_share(run.cpu):.0%} of a core"
    )


def _line(system: System, run: RunStats) -> str:
    return (
        f"  {system}: {run.items_per_s:.0f} items/s, p50 {fmt(run.latency.p50_ms)} ms, "
        f"p99 {fmt(run.latency.p99_ms)} ms, answered {run.answered_share:.1%}"
    )


def rotated(systems: Sequence[System], index: int) -> tuple[System, ...]:
    """The order of the systems at the ``index``-th load: each load starts with the next system, so
    that no system is always the one measured first, on a broker the least warmed by the traffic of
    this load (the pipeline was, at every load, before)."""
    shift = index % len(systems) if systems else 0
    return tuple(systems[shift:]) + tuple(systems[:shift])


async def measure_levels(ctx: BenchContext) -> tuple[dict[str, Any], list[Level], dict[str, DrainRun]]:
    """The broker's warm-up, then every load, every chosen system in turn at each, the order rotated
    from load to load; then each system's drain of a backlog."""
    systems = ctx.settings.systems
    warmup = await warm_broker(ctx)
    levels = []
    for index, rate in enumerate(ctx.settings.loads_per_s):
        measured: dict[str, PipelineRun | EchoRun | PeerRun] = {}
        for system in rotated(systems, index):
            ctx.ui.step(f"offered load {rate:g}/s: {system}")
            measured[system] = result = await _measure_undisturbed(ctx, system, rate, index == 0)
            ctx.ui.done_phase()
            ctx.ui.step(_line(system, result.run))
        pipeline = measured.pop("pipeline")
        assert isinstance(pipeline, PipelineRun)
        levels.append(Level(rate, pipeline, **measured))  # type: ignore[arg-type]
    capacity = await measure_capacity(ctx)
    ctx.ui.done_phase()
    return warmup, levels, capacity


def peer_name() -> str:
    """The peer's package and version, as the results name it."""
    try:
        return f"{PEER_PACKAGE} {metadata.version(PEER_PACKAGE)}"
    except metadata.PackageNotFoundError:
        return f"{PEER_PACKAGE} (not installed)"


@dataclass(frozen=True, slots=True)
class BenchResult:
    """Everything one run measured."""

    timestamp: str
    wall_s: float
    machine: dict[str, Any]
    """Hardware and versions, and what else ran on the machine (benches share it)."""
    code: dict[str, Any]
    """The commit measured, and files of the pipeline that differed from it."""
    worker: dict[str, Any]
    """The worker's effective settings (delivery among them, where it has the setting)."""
    levels: list[Level]
    floor: dict[str, list[FloorPoint]]
    peer_name: str
    """The peer's package and version."""
    gpu: dict[str, Any] | None = None
    """The GPU bench's numbers (device, providers, bare and pipeline items/s per batch size), where one
    ran; None on a machine without one."""
    warmup: dict[str, Any] = field(default_factory=dict)
    """The broker's warm-up (``warm_broker``): how long, what its JIT compiled meanwhile, whether its
    compilers went quiet before the first load."""
    capacity: dict[str, DrainRun] = field(default_factory=dict)
    """Each system's drain of a backlog (``capacity.py``), after the loads; empty when not measured."""

    def idle_cpu_share(self) -> dict[str, float] | None:
        """Worker and broker shares of a core with no traffic (measured after the first load)."""
        return next((lv.pipeline.idle_cpu_share for lv in self.levels if lv.pipeline.idle_cpu_share), None)

    def to_json(self, settings: BenchSettings) -> dict[str, Any]:
        """``pipeline.json``: settings, machine, the ratios, per-load CPU, the peer, every level."""
        guarantees: tuple[Guarantee, ...] = ("at_least_once", "exactly_once")
        intervals = {g: peer_commit_interval_s(settings, g) for g in guarantees}
        document: dict[str, Any] = _rounded(
            {
                "bench": "pipeline",
                "timestamp": self.timestamp,
                "wall_s": self.wall_s,
                "machine": self.machine,
                "code": self.code,
                "settings": settings.model_dump(mode="json", exclude={"out_dir", "keep_home"}),
                "worker_settings": self.worker,
                "broker_warmup": self.warmup,
                "ratios": summary(self.levels, settings.systems),
                "cpu_ms_per_request": per_load(self.levels, lambda lv: lv.pipeline.run.cpu_ms_per_request),
                "idle_cpu_share": self.idle_cpu_share(),
                "peer": peer_summary(
                    self.levels, self.peer_name, str(self.worker.get("delivery", "at_least_once")), intervals
                ),
                "tracing": tracing_summary(self.levels, settings.trace_sample_ratio),
                "capacity": capacity_summary(
                    self.capacity, settings.capacity_backlog, settings.capacity_send_rate_per_s
                )
                if self.capacity
                else None,
                "gpu": self.gpu,
                "levels": [asdict(lv) for lv in self.levels],
                "onnxruntime_floor": {m: [asdict(p) for p in pts] for m, pts in self.floor.items()},
            }
        )
        return document


REGIONS = (PIPELINE_REGION, ECHO_REGION, PEER_REGION)
"""The bench's regions: each system's own topics (the echoes share one, the peers another)."""


def _on_broker(
    settings: BenchSettings, broker_settings: BrokerSettings, ui: Ui, keyring: KeyRing
) -> tuple[WorkerSettings, dict[str, Any], list[Level], dict[str, DrainRun]]:
    """Start the broker, make the topics and ACLs, run every load and the drains; the broker is stopped
    on return."""
    home = broker_settings.home
    ui.step(f"starting the Kafka broker ({broker_settings.kafka_version})")
    with running_broker(broker_settings) as state:
        ui.step(f"broker at {state.bootstrap} ({state.security_protocol}); creating topics and ACLs")
        admin = state.kafka()
        asyncio.run(ensure_topics(admin, all_topics(REGIONS)))  # cloud topics too: workers send there
        if state.security_protocol == "SSL":
            asyncio.run(apply_policy(admin, REGIONS))
        ctx = BenchContext(settings, home, admin, state.tls_root, keyring, ui, state.pid)
        worker = worker_settings(ctx, "worker")
        ui.step(
            f"worker delivery {worker_delivery(worker)}, max batch {worker.max_batch}; "
            f"systems {', '.join(settings.systems)}"
        )
        warmup, levels, capacity = eventloop.run(measure_levels(ctx), settings.fleet_event_loop)
        ui.step("stopping the Kafka broker")
    return worker, warmup, levels, capacity


def run_bench(settings: BenchSettings, console: Console) -> BenchResult:
    """The whole run; every process it started is stopped, and its home removed, when it returns or raises."""
    started_s = time.monotonic()
    timestamp = datetime.now(UTC).isoformat(timespec="seconds")
    load_at_start = round(os.getloadavg()[0], 2)
    others = foreign_processes()
    # Before anything of the run's is started: what an idle gap costs on this machine itself.
    before = {"loadavg_1m_at_start": load_at_start, "others_at_start": others, "wake_penalty": wake_penalty()}
    code = code_facts()
    if load_at_start > 1.0 or any(others.values()):
        log.warning(
            "the machine is busy (load %.2f; already running: %s): expect noisy numbers",
            load_at_start,
            others,
        )
    ui = Ui(console, phases=len(settings.systems) * len(settings.loads_per_s) + 2)
    home = Path(tempfile.mkdtemp(prefix="edgestream-bench-"))
    broker_settings = BrokerSettings(home=home, security=settings.broker_security, jit=settings.broker_jit)
    try:
        with ui.progress:
            ui.step(f"home {home}; building models")
            store = ModelStore(home / "models")
            for name in MODEL_FOR_KIND.values():
                for size in dict.fromkeys((settings.model_size, "tiny")):
                    store.get(name, size)
            keyring = keyfile.create(home / "keys.json", REGIONS)
            worker, warmup, levels, capacity = _on_broker(settings, broker_settings, ui, keyring)
            sizes = sorted(
                {b for b in settings.floor_batch_sizes if b <= worker.max_batch}
                | {int(k) for lv in levels for k in lv.pipeline.batch_histogram}
            )
            ui.step(f"bare onnxruntime at batch sizes {sizes}")
            floor = onnx_floor(settings, home, sizes)
            gpu = gpu_block(home, model_size=settings.model_size)  # None without CUDA
            ui.done_phase()
    finally:
        if settings.keep_home:
            console.log(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
    for lv in levels:
        lv.ratios = level_ratios(lv, floor)
    return BenchResult(
        timestamp=timestamp,
        wall_s=time.monotonic() - started_s,
        machine={**machine_facts(broker_settings.kafka_version), **before},
        code=code,
        worker=worker.model_dump(
            mode="json",
            exclude={"region", "node_id", "home", "key_file", "kafka", "ready_file", "stats_file"},
        ),
        levels=levels,
        floor=floor,
        peer_name=peer_name(),
        warmup=warmup,
        gpu=gpu,
        capacity=capacity,
    )
