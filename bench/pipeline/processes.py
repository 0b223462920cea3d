"""The processes a run starts (worker, echo, peer): spawn, wait for ready, stop; their settings and
environment."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench import REPO_ROOT
from bench.peers.settings import Guarantee
from bench.pipeline.context import BenchContext
from bench.pipeline.settings import ECHO_REGION, PEER_GROUP, PEER_REGION, PIPELINE_REGION, BenchSettings
from edgestream.workers.edge.settings import WorkerSettings
from edgestream.workers.local.processes import Child

log = logging.getLogger(__name__)


def ready_file(ctx: BenchContext, name: str) -> Path:
    """Where the process ``name`` writes that it can serve."""
    return ctx.run_dir / f"{name}.ready"


def stats_file(ctx: BenchContext, name: str) -> Path:
    """Where the process ``name`` writes its stats at exit."""
    return ctx.run_dir / f"{name}.stats.json"


def child_stats(ctx: BenchContext, child: Child) -> dict[str, Any]:
    """The child's stats file (written at exit), or {} when it wrote none."""
    try:
        data: dict[str, Any] = json.loads(stats_file(ctx, child.name).read_text())
    except (OSError, ValueError) as err:
        log.warning("%s left no readable stats (%s); see %s", child.name, err, child.log_file)
        return {}
    return data


@contextlib.asynccontextmanager
async def child_process(
    ctx: BenchContext, name: str, command: Sequence[str], env: Mapping[str, str]
) -> AsyncIterator[Child]:
    """Start a process that writes a ready file; yield once it exists; always stop it (SIGTERM)."""
    child = Child.start(name, command, env=env, log_file=ctx.run_dir / f"{name}.log", cwd=REPO_ROOT)
    try:
        await child.wait_ready_async(ready_file(ctx, name), ctx.settings.ready_timeout_s)
        yield child
    finally:
        code = await child.stop_async()
        if code != 0:
            log.warning("%s exited with %d:\n%s", name, code, child.tail())


def worker_settings(ctx: BenchContext, name: str) -> WorkerSettings:
    """The worker's settings: the bench's choices, else the worker's defaults (or EDGESTREAM_WORKER_*)."""
    s = ctx.settings
    tuned: dict[str, Any] = {}
    if s.max_batch is not None:
        tuned["max_batch"] = s.max_batch
    if s.max_wait_ms is not None:
        tuned["max_wait_ms"] = s.max_wait_ms
    return WorkerSettings(
        region=PIPELINE_REGION,
        node_id=name,
        home=ctx.home,
        key_file=ctx.home / "keys.json",
        kafka=ctx.bootstrap,
        model_size=s.model_size,
        intra_op_threads=s.intra_op_threads,
        ready_file=ready_file(ctx, name),
        stats_file=stats_file(ctx, name),
        **tuned,
    )


def worker_delivery(settings: WorkerSettings) -> str:
    """The worker's delivery guarantee (a worker without the setting is at-least-once)."""
    return str(getattr(settings, "delivery", "at_least_once"))


def traces_file(ctx: BenchContext, name: str) -> Path:
    """Where the traced process ``name`` appends its spans (OTLP JSON lines)."""
    return ctx.run_dir / f"{name}.traces.jsonl"


def tracing_env(ctx: BenchContext, name: str, *, traced: bool) -> dict[str, str]:
    """The worker's ``OTEL_*`` variables: spans to its traces file, following the devices' sampling
    (parent-based); untraced, tracing off whatever the bench's own environment says."""
    if not traced:
        return {"OTEL_TRACES_EXPORTER": "none"}
    return {
        "OTEL_TRACES_EXPORTER": "file",
        "EDGESTREAM_TRACES_FILE": str(traces_file(ctx, name)),
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
    }


def worker_env(
    ctx: BenchContext, name: str, settings: WorkerSettings, *, traced: bool = False
) -> dict[str, str]:
    """The child's environment: ours, plus the settings the bench chose, spelled as the worker reads them."""
    return {
        **os.environ,
        **tracing_env(ctx, name, traced=traced),
        "EDGESTREAM_WORKER_REGION": settings.region,
        "EDGESTREAM_WORKER_NODE_ID": name,
        "EDGESTREAM_WORKER_HOME": str(ctx.home),
        "EDGESTREAM_WORKER_KEY_FILE": str(ctx.home / "keys.json"),
        **ctx.bootstrap.to_env("EDGESTREAM_WORKER_KAFKA__"),
        "EDGESTREAM_WORKER_MODEL_SIZE": settings.model_size,
        "EDGESTREAM_WORKER_MAX_BATCH": str(settings.max_batch),
        "EDGESTREAM_WORKER_MAX_WAIT_MS": str(settings.max_wait_ms),
        "EDGESTREAM_WORKER_INTRA_OP_THREADS": str(settings.intra_op_threads),
        "EDGESTREAM_WORKER_READY_FILE": str(ready_file(ctx, name)),
        "EDGESTREAM_WORKER_STATS_FILE": str(stats_file(ctx, name)),
    }


def echo_env(ctx: BenchContext, name: str, *, transactional: bool) -> dict[str, str]:
    """The echo's environment: in transactions (exactly-once) or acknowledged then committed."""
    return {
        **os.environ,
        "EDGESTREAM_ECHO_REGION": ECHO_REGION,
        **ctx.bootstrap.to_env("EDGESTREAM_ECHO_KAFKA__"),
        "EDGESTREAM_ECHO_TRANSACTIONAL": "true" if transactional else "false",
        "EDGESTREAM_ECHO_FREEZE_HEAP": "true" if ctx.settings.freeze_heaps else "false",
        "EDGESTREAM_ECHO_READY_FILE": str(ready_file(ctx, name)),
        "EDGESTREAM_ECHO_STATS_FILE": str(stats_file(ctx, name)),
    }


def peer_commit_interval_s(settings: BenchSettings, guarantee: Guarantee) -> float | None:
    """The peer's Quix ``commit_interval`` under ``guarantee`` (None: Quix's default)."""
    if guarantee == "exactly_once":
        return settings.peer_eos_commit_interval_s
    return settings.peer_alo_commit_interval_s


def peer_env(ctx: BenchContext, name: str, guarantee: Guarantee) -> dict[str, str]:
    """The peer's environment: the worker's identity, home (models, keys), model size and threads."""
    s = ctx.settings
    env = {
        **os.environ,
        "EDGESTREAM_PEER_REGION": PEER_REGION,
        "EDGESTREAM_PEER_GROUP": PEER_GROUP,
        **ctx.bootstrap.to_env("EDGESTREAM_PEER_KAFKA__"),
        "EDGESTREAM_PEER_HOME": str(ctx.home),
        "EDGESTREAM_PEER_MODEL_SIZE": s.model_size,
        "EDGESTREAM_PEER_INTRA_OP_THREADS": str(s.intra_op_threads),
        "EDGESTREAM_PEER_GUARANTEE": guarantee,
        "EDGESTREAM_PEER_READY_FILE": str(ready_file(ctx, name)),
        "EDGESTREAM_PEER_STATS_FILE": str(stats_file(ctx, name)),
    }
    interval_s = peer_commit_interval_s(s, guarantee)
    if interval_s is not None:
        env["EDGESTREAM_PEER_COMMIT_INTERVAL_S"] = str(interval_s)
    return env
