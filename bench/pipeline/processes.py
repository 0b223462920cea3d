"""The worker and echo processes a run starts: spawn, wait for ready, stop; their settings and environment."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import REPO_ROOT
from bench.pipeline.context import BenchContext
from bench.pipeline.settings import ECHO_REGION, PIPELINE_REGION, BenchError
from edgestream.workers.edge.settings import WorkerSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Child:
    """A worker or echo process this bench started."""

    name: str
    proc: subprocess.Popen[bytes]
    ready_file: Path
    stats_file: Path
    log_file: Path

    def stats(self) -> dict[str, Any]:
        """Its stats file (written at exit), or {} when it wrote none."""
        try:
            data: dict[str, Any] = json.loads(self.stats_file.read_text())
        except (OSError, ValueError) as err:
            log.warning("%s left no readable stats (%s); see %s", self.name, err, self.log_file)
            return {}
        return data


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.asynccontextmanager
async def child_process(
    ctx: BenchContext, name: str, command: Sequence[str], env: Mapping[str, str]
) -> AsyncIterator[Child]:
    """Start a process that writes a ready file; yield once it exists; always stop it (SIGTERM)."""
    child = Child(
        name,
        proc=_spawn(command, env, ctx.run_dir / f"{name}.log"),
        ready_file=ctx.run_dir / f"{name}.ready",
        stats_file=ctx.run_dir / f"{name}.stats.json",
        log_file=ctx.run_dir / f"{name}.log",
    )
    try:
        deadline_s = time.monotonic() + ctx.settings.ready_timeout_s
        while not child.ready_file.exists():
            if child.proc.poll() is not None:
                raise BenchError(f"{name} exited with {child.proc.returncode}:\n{_tail(child.log_file)}")
            if time.monotonic() > deadline_s:
                raise BenchError(f"{name} not ready after {ctx.settings.ready_timeout_s:.0f} s")
            await asyncio.sleep(0.05)
        yield child
    finally:
        await _stop(child)


def _spawn(command: Sequence[str], env: Mapping[str, str], log_file: Path) -> subprocess.Popen[bytes]:
    with log_file.open("wb") as out:
        return subprocess.Popen(
            list(command),
            cwd=REPO_ROOT,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


async def _stop(child: Child, timeout_s: float = 30.0) -> None:
    if child.proc.poll() is None:
        child.proc.send_signal(signal.SIGTERM)
    deadline_s = time.monotonic() + timeout_s
    while child.proc.poll() is None:
        if time.monotonic() > deadline_s:
            log.warning("%s did not stop in %.0f s; killing it", child.name, timeout_s)
            child.proc.kill()
            child.proc.wait()
            return
        await asyncio.sleep(0.05)
    if child.proc.returncode != 0:
        log.warning("%s exited with %d:\n%s", child.name, child.proc.returncode, _tail(child.log_file))


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
        ready_file=ctx.run_dir / f"{name}.ready",
        stats_file=ctx.run_dir / f"{name}.stats.json",
        **tuned,
    )


def worker_delivery(settings: WorkerSettings) -> str:
    """The worker's delivery guarantee (a worker without the setting is at-least-once)."""
    return str(getattr(settings, "delivery", "at_least_once"))


def worker_env(ctx: BenchContext, name: str, settings: WorkerSettings) -> dict[str, str]:
    """The child's environment: ours, plus the settings the bench chose, spelled as the worker reads them."""
    return {
        **os.environ,
        "EDGESTREAM_WORKER_REGION": settings.region,
        "EDGESTREAM_WORKER_NODE_ID": name,
        "EDGESTREAM_WORKER_HOME": str(ctx.home),
        "EDGESTREAM_WORKER_KEY_FILE": str(ctx.home / "keys.json"),
        **ctx.bootstrap.to_env("EDGESTREAM_WORKER_KAFKA__"),
        "EDGESTREAM_WORKER_MODEL_SIZE": settings.model_size,
        "EDGESTREAM_WORKER_MAX_BATCH": str(settings.max_batch),
        "EDGESTREAM_WORKER_MAX_WAIT_MS": str(settings.max_wait_ms),
        "EDGESTREAM_WORKER_INTRA_OP_THREADS": str(settings.intra_op_threads),
        "EDGESTREAM_WORKER_READY_FILE": str(ctx.run_dir / f"{name}.ready"),
        "EDGESTREAM_WORKER_STATS_FILE": str(ctx.run_dir / f"{name}.stats.json"),
    }


def echo_transactional(ctx: BenchContext) -> bool:
    """Whether the echo runs in transactions (``echo_delivery``, or like the worker)."""
    if ctx.settings.echo_delivery == "match_worker":
        return worker_delivery(worker_settings(ctx, "worker")) == "exactly_once"
    return ctx.settings.echo_delivery == "exactly_once"


def echo_env(ctx: BenchContext, name: str) -> dict[str, str]:
    return {
        **os.environ,
        "EDGESTREAM_ECHO_REGION": ECHO_REGION,
        **ctx.bootstrap.to_env("EDGESTREAM_ECHO_KAFKA__"),
        "EDGESTREAM_ECHO_TRANSACTIONAL": "true" if echo_transactional(ctx) else "false",
        "EDGESTREAM_ECHO_READY_FILE": str(ctx.run_dir / f"{name}.ready"),
        "EDGESTREAM_ECHO_STATS_FILE": str(ctx.run_dir / f"{name}.stats.json"),
    }
