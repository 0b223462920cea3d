"""The whole run: a home, a broker, every load for both targets, bare onnxruntime, the ratios."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.pipeline.context import BenchContext, Ui
from bench.pipeline.fleets import EchoFleet, run_fleet_as
from bench.pipeline.floor import batch_us_at, onnx_floor
from bench.pipeline.machine import code_facts, foreign_processes, machine_facts
from bench.pipeline.measure import measure_echo, measure_pipeline, wait_caught_up
from bench.pipeline.processes import (
    child_process,
    echo_env,
    echo_transactional,
    worker_delivery,
    worker_settings,
)
from bench.pipeline.report import fmt
from bench.pipeline.results import FloorPoint, Level, LevelRatios
from bench.pipeline.settings import ECHO_GROUP, ECHO_REGION, PIPELINE_REGION, BenchSettings
from edgestream.pipeline.models import ModelStore
from edgestream.pipeline.security import keyfile
from edgestream.topics.acl_admin import apply_policy
from edgestream.topics.admin import ensure_topics
from edgestream.topics.catalogue import all_topics
from edgestream.workers.local.broker.process import running_broker
from edgestream.workers.local.broker.settings import BrokerSettings
from edgestream.workers.local.fleet_settings import MODEL_FOR_KIND

log = logging.getLogger(__name__)


def ratios(level: Level, floor: Mapping[str, Sequence[FloorPoint]]) -> LevelRatios:
    pipe, echo = level.pipeline.run, level.echo.run

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    per_item_us = batch_run_us = None
    if level.pipeline.by_model:
        per_item_us = batch_run_us = 0.0
        for model, info in level.pipeline.by_model.items():
            at = batch_us_at(floor[model], info["mean_batch"])
            per_item_us += info["share"] * at / info["mean_batch"]
            batch_run_us += info["share"] * at
    p50_us = None if pipe.latency.p50_ms is None else pipe.latency.p50_ms * 1000.0
    return LevelRatios(
        p50_vs_echo=ratio(pipe.latency.p50_ms, echo.latency.p50_ms),
        p99_vs_echo=ratio(pipe.latency.p99_ms, echo.latency.p99_ms),
        items_per_s_vs_echo=ratio(pipe.items_per_s, echo.items_per_s),
        p50_vs_one_hop=ratio(pipe.latency.p50_ms, level.echo.one_hop.p50_ms),
        infer_share_per_item=ratio(per_item_us, p50_us),
        infer_share_batch_run=ratio(batch_run_us, p50_us),
    )


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


async def warm_broker(ctx: BenchContext) -> None:
    """Echo traffic that is thrown away: the broker's JVM compiles its hot paths before the first load."""
    s = ctx.settings
    if s.broker_warmup_s <= 0:
        return
    ctx.ui.step(
        f"warming the broker up: {s.broker_warmup_rate_per_s:g}/s for {s.broker_warmup_s:g} s (discarded)"
    )
    command = [sys.executable, "-m", "bench.pipeline", "echo"]
    async with child_process(ctx, "echo-warmup", command, echo_env(ctx, "echo-warmup")):
        await run_fleet_as(
            ctx, EchoFleet, ECHO_REGION, s.broker_warmup_rate_per_s, s.broker_warmup_s, "broker warm-up"
        )
        await wait_caught_up(ctx, ECHO_GROUP, ECHO_REGION)


async def measure_levels(ctx: BenchContext) -> list[Level]:
    await warm_broker(ctx)
    levels = []
    for rate in ctx.settings.loads_per_s:
        ctx.ui.step(f"offered load {rate:g}/s: pipeline")
        pipeline = await measure_pipeline(ctx, rate)
        ctx.ui.done_phase()
        ctx.ui.step(
            f"  pipeline: {pipeline.run.items_per_s:.0f} items/s, p50 {fmt(pipeline.run.latency.p50_ms)} ms, "
            f"p99 {fmt(pipeline.run.latency.p99_ms)} ms, answered {pipeline.run.answered_share:.1%}"
        )
        ctx.ui.step(f"offered load {rate:g}/s: echo floor")
        echo = await measure_echo(ctx, rate)
        ctx.ui.done_phase()
        ctx.ui.step(
            f"  echo: {echo.run.items_per_s:.0f} items/s, p50 {fmt(echo.run.latency.p50_ms)} ms, "
            f"p99 {fmt(echo.run.latency.p99_ms)} ms, answered {echo.run.answered_share:.1%}"
        )
        levels.append(Level(rate, pipeline, echo))
    return levels


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
    echo_transactional: bool
    """Whether the echo floor ran in transactions (exactly-once) or acknowledged then committed."""
    levels: list[Level]
    floor: dict[str, list[FloorPoint]]

    def to_json(self, settings: BenchSettings) -> dict[str, Any]:
        top = self.levels[-1]

        def per_load(get: Callable[[LevelRatios], float | None]) -> dict[str, float | None]:
            return {f"{lv.offered_per_s:g}": get(lv.ratios) for lv in self.levels if lv.ratios}

        document: dict[str, Any] = _rounded(
            {
                "bench": "pipeline",
                "timestamp": self.timestamp,
                "wall_s": self.wall_s,
                "machine": self.machine,
                "code": self.code,
                "settings": settings.model_dump(mode="json", exclude={"out_dir", "keep_home"}),
                "worker_settings": self.worker,
                "echo_transactional": self.echo_transactional,
                "ratios": {
                    "highest_offered_per_s": top.offered_per_s,
                    "items_per_s_vs_echo_at_highest": top.ratios.items_per_s_vs_echo if top.ratios else None,
                    "p50_vs_echo": per_load(lambda r: r.p50_vs_echo),
                    "p99_vs_echo": per_load(lambda r: r.p99_vs_echo),
                    "infer_share_per_item": per_load(lambda r: r.infer_share_per_item),
                    "infer_share_batch_run": per_load(lambda r: r.infer_share_batch_run),
                },
                "levels": [asdict(lv) for lv in self.levels],
                "onnxruntime_floor": {m: [asdict(p) for p in pts] for m, pts in self.floor.items()},
            }
        )
        return document


def run_bench(settings: BenchSettings, console: Console) -> BenchResult:
    """The whole run; every process it started is stopped, and its home removed, when it returns or raises."""
    started_s = time.monotonic()
    timestamp = datetime.now(UTC).isoformat(timespec="seconds")
    load_at_start = round(os.getloadavg()[0], 2)
    others = foreign_processes()
    before = {"loadavg_1m_at_start": load_at_start, "others_at_start": others}
    code = code_facts()
    if load_at_start > 1.0 or any(others.values()):
        log.warning(
            "the machine is busy (load %.2f; already running: %s): expect noisy numbers",
            load_at_start,
            others,
        )
    ui = Ui(console, phases=2 * len(settings.loads_per_s) + 1)
    home = Path(tempfile.mkdtemp(prefix="edgestream-bench-"))
    broker_settings = BrokerSettings(home=home, security=settings.broker_security)
    try:
        with ui.progress:
            ui.step(f"home {home}; building models")
            store = ModelStore(home / "models")
            for name in MODEL_FOR_KIND.values():
                for size in dict.fromkeys((settings.model_size, "tiny")):
                    store.get(name, size)
            keyring = keyfile.create(home / "keys.json", [PIPELINE_REGION, ECHO_REGION])
            ui.step(f"starting the Kafka broker ({broker_settings.kafka_version})")
            with running_broker(broker_settings) as state:
                ui.step(f"broker at {state.bootstrap} ({state.security_protocol}); creating topics and ACLs")
                topics = all_topics([PIPELINE_REGION, ECHO_REGION])  # cloud topics too: workers send there
                admin = state.kafka()
                asyncio.run(ensure_topics(admin, topics))
                if state.security_protocol == "SSL":
                    asyncio.run(apply_policy(admin, [PIPELINE_REGION, ECHO_REGION]))
                ctx = BenchContext(settings, home, admin, state.tls_root, keyring, ui, state.pid)
                worker = worker_settings(ctx, "worker")
                transactional = echo_transactional(ctx)
                ui.step(
                    f"worker delivery {worker_delivery(worker)}, max batch {worker.max_batch}; "
                    f"echo {'in transactions' if transactional else 'acknowledged, then committed'}"
                )
                levels = asyncio.run(measure_levels(ctx))
                ui.step("stopping the Kafka broker")
            sizes = sorted(
                {b for b in settings.floor_batch_sizes if b <= worker.max_batch}
                | {int(k) for lv in levels for k in lv.pipeline.batch_histogram}
            )
            ui.step(f"bare onnxruntime at batch sizes {sizes}")
            floor = onnx_floor(settings, home, sizes)
            ui.done_phase()
    finally:
        if settings.keep_home:
            console.log(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
    for lv in levels:
        lv.ratios = ratios(lv, floor)
    return BenchResult(
        timestamp=timestamp,
        wall_s=time.monotonic() - started_s,
        machine={**machine_facts(broker_settings.kafka_version), **before},
        code=code,
        worker=worker.model_dump(
            mode="json",
            exclude={"region", "node_id", "home", "key_file", "kafka", "ready_file", "stats_file"},
        ),
        echo_transactional=transactional,
        levels=levels,
        floor=floor,
    )
