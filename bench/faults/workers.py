"""Edge workers as real processes: ``python -m edgestream worker`` per region, restartable, supervised,
always reaped; what their logs and stats files say."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench import REPO_ROOT
from bench.faults.env import (
    MAX_AGE_MS,
    MAX_BODY_BYTES,
    MAX_ENVELOPE_BYTES,
    FaultEnv,
    FaultRegion,
    FaultTimeout,
    wait_for,
)
from edgestream.workers.local.processes import Child, ChildFailed, edgestream_command

log = logging.getLogger(__name__)

BASE_WORKER_SETTINGS: Mapping[str, object] = {
    "MODEL_SIZE": "medium",
    "MAX_BATCH": 32,
    "MAX_WAIT_MS": 4,
    "MAX_ENVELOPE_BYTES": MAX_ENVELOPE_BYTES,
    "MAX_BODY_BYTES": MAX_BODY_BYTES,
    "MAX_AGE_MS": MAX_AGE_MS,
    # The rate limit is per device; these scenarios are not about it.
    "DEVICE_RATE_PER_S": 100_000,
    "DEVICE_BURST": 100_000,
}
"""``EDGESTREAM_WORKER_*`` settings every worker in these scenarios gets (a scenario may add more)."""
WORKER_TRANSACTIONS_ENV = "EDGESTREAM_FAULTS_WORKER_TRANSACTIONS"
"""When set (``per_partition`` or ``per_worker``), every worker of every scenario gets it as
``EDGESTREAM_WORKER_TRANSACTIONS``: the scenarios run against either exactly-once sink (the workers'
environment is otherwise cleared of ``EDGESTREAM_WORKER_*``)."""
READY_TIMEOUT_S = 90.0
"""A worker loads models and joins its group within this; after a kill -9 the join waits for the dead
member's session (10 s) to expire."""


_ASSIGNED_RE = re.compile(r"assigned \[(.*)\]\s*$")
_ERROR_LINE_RE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Fenced): ")
_CLIENT_NOISE = ("aiokafka.", "asyncio.", "KeyError")


class WorkerDied(AssertionError):
    """A worker process exited when it was expected to run."""


class WorkerProcess:
    """``python -m edgestream worker`` for a region, restartable; each start is a new incarnation with
    its own node id (``<name>.<n>``), log, ready and stats files."""

    def __init__(
        self,
        name: str,
        region: FaultRegion,
        env: FaultEnv,
        settings: Mapping[str, object],
        base: Mapping[str, object] = BASE_WORKER_SETTINGS,
    ) -> None:
        self.name = name
        self.region = region
        self.settings = {**base, **settings}
        self.run_dir = env.run_dir / region.name
        self.home = env.home
        self.incarnation = 0
        self.child: Child | None = None
        """The latest incarnation's process."""
        self.exits: list[int] = []
        """Exit codes of earlier incarnations, in order."""
        self.supervised = True
        """Restart it if it exits on its own (``Workers.supervise``)."""
        self.stopping = False
        self.quick_exits = 0
        """Consecutive exits within ``READY_TIMEOUT_S`` of a start (the restart backoff grows with it)."""

    @property
    def node_id(self) -> str:
        return f"{self.name}.{self.incarnation}"

    def _path(self, suffix: str, incarnation: int | None = None) -> Path:
        return self.run_dir / f"{self.name}.{incarnation or self.incarnation}.{suffix}"

    @property
    def log_path(self) -> Path:
        return self._path("log")

    @property
    def ready_path(self) -> Path:
        return self._path("ready")

    @property
    def stats_path(self) -> Path:
        return self._path("stats.json")

    @property
    def pid(self) -> int | None:
        return None if self.child is None else self.child.proc.pid

    @property
    def started_s(self) -> float:
        """Monotonic time of the latest start."""
        return 0.0 if self.child is None else self.child.started_s

    def start(self) -> None:
        """Start the next incarnation (the previous one must have exited)."""
        if self.alive():
            raise RuntimeError(f"worker {self.node_id} is still running")
        self.incarnation += 1
        self.stopping = False
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for path in (self.ready_path, self.stats_path):
            path.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGESTREAM_WORKER_")}
        own = {
            "REGION": self.region.name,
            "NODE_ID": self.node_id,
            "HOME": str(self.home),
            "KEY_FILE": str(self.region.key_file),
            **self.region.worker_kafka.to_env("KAFKA__"),
            "READY_FILE": str(self.ready_path),
            "STATS_FILE": str(self.stats_path),
            **worker_transactions(),
            **self.settings,
        }
        env.update({f"EDGESTREAM_WORKER_{k}": str(v) for k, v in own.items()})
        self.child = Child.start(
            f"worker {self.node_id}",
            edgestream_command("worker"),
            env=env,
            log_file=self.log_path,
            cwd=REPO_ROOT,
            new_session=True,
        )
        log.info("started worker %s (pid %d)", self.node_id, self.child.proc.pid)

    def alive(self) -> bool:
        return self.child is not None and self.child.running()

    def returncode(self) -> int | None:
        return None if self.child is None else self.child.returncode

    def log_text(self, incarnation: int | None = None) -> str:
        try:
            return self._path("log", incarnation).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 25) -> str:
        return "" if self.child is None else self.child.tail(lines)

    def _started(self) -> Child:
        if self.child is None:
            raise RuntimeError(f"worker {self.name} was never started")
        return self.child

    async def ready(self, timeout_s: float = READY_TIMEOUT_S) -> dict[str, Any]:
        """Wait for the ready file (models loaded, first assignment made); returns its content."""
        child = self._started()

        def check() -> bool:
            try:
                return child.is_ready(self.ready_path, timeout_s=math.inf)
            except ChildFailed as err:
                raise WorkerDied(str(err)) from None

        await wait_for(f"worker {self.node_id} ready", check, timeout_s)
        ready: dict[str, Any] = json.loads(self.ready_path.read_text())
        return ready

    def signal(self, sig: signal.Signals) -> None:
        child = self._started()
        log.info("sending %s to worker %s (pid %d)", sig.name, self.node_id, child.proc.pid)
        child.send_signal(sig)

    async def wait_exit(self, timeout_s: float) -> int | None:
        """The exit code, or None if it still runs after ``timeout_s``."""
        with contextlib.suppress(FaultTimeout):
            await wait_for(f"worker {self.node_id} exits", lambda: not self.alive(), timeout_s, 0.05)
        code = self.returncode()
        if code is not None and len(self.exits) < self.incarnation:
            self.exits.append(code)
        return code

    async def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (the graceful path: finish the open unit, leave the group) and wait; SIGKILL after
        ``timeout_s`` and raise."""
        self.stopping = True
        if self.alive():
            self.signal(signal.SIGTERM)
        code = await self.wait_exit(timeout_s)
        if code is None:
            self.kill()
            raise WorkerDied(f"worker {self.node_id} ignored SIGTERM for {timeout_s:.0f} s:\n{self.tail()}")
        return code

    async def kill9(self) -> int | None:
        """``kill -9`` (not restarted by the supervisor: the scenario restarts it); its exit code."""
        self.stopping = True
        self.signal(signal.SIGKILL)
        return await self.wait_exit(10)

    def kill(self) -> None:
        """SIGCONT then SIGKILL, and reap: cleanup, whatever state it is in."""
        self.stopping = True
        if self.child is None or not self.child.running():
            return
        self.child.send_signal(signal.SIGCONT)
        self.child.send_signal(signal.SIGKILL)
        code = self.child.proc.wait(timeout=30)
        if len(self.exits) < self.incarnation:
            self.exits.append(code)

    def assigned(self) -> set[str] | None:
        """The partitions of its latest assignment (from its log), None before the first."""
        latest: str | None = None
        for line in self.log_text().splitlines():
            match = _ASSIGNED_RE.search(line)
            if match is not None:
                latest = match.group(1)
        if latest is None:
            return None
        return set(re.findall(r"'([^']+)'", latest))

    def errors(self, incarnation: int | None = None) -> list[str]:
        """The ``module.Error: message`` lines its log ends tracebacks with (aiokafka's noise left out)."""
        lines = self.log_text(incarnation).splitlines()
        found = [
            line[:300] for line in lines if _ERROR_LINE_RE.match(line) and not line.startswith(_CLIENT_NOISE)
        ]
        if not found and lines and self.returncode() not in (None, 0):
            found.append(f"(last line) {lines[-1][:280]}")
        return found

    def stats(self, incarnation: int | None = None) -> dict[str, Any] | None:
        """The stats file the incarnation wrote at exit (None if it was killed)."""
        try:
            stats: dict[str, Any] = json.loads(self._path("stats.json", incarnation).read_text())
        except FileNotFoundError:
            return None
        return stats


def worker_transactions() -> dict[str, str]:
    """``{"TRANSACTIONS": ...}`` when ``WORKER_TRANSACTIONS_ENV`` is set, else nothing (the default)."""
    value = os.environ.get(WORKER_TRANSACTIONS_ENV)
    return {"TRANSACTIONS": value} if value else {}


def partition_names(region: FaultRegion) -> set[str]:
    """How a worker's log names every ingest partition of the region."""
    return {f"{tp.topic}[{tp.partition}]" for tp in region.ingest}


class Workers:
    """The worker processes of one scenario: started, supervised, always reaped."""

    def __init__(self, region: FaultRegion, env: FaultEnv) -> None:
        self.region = region
        self.env = env
        self.all: dict[str, WorkerProcess] = {}
        self.restarts = 0
        """Incarnations started after the first, for any reason."""
        self.unexpected_exits: list[str] = []
        """``node: exit code`` of every worker that exited without being told to."""
        self._supervisor: asyncio.Task[None] | None = None

    def start(self, name: str, **settings: object) -> WorkerProcess:
        """Start worker ``name`` with ``BASE_WORKER_SETTINGS`` and ``settings`` on top."""
        return self._start(WorkerProcess(name, self.region, self.env, settings))

    def start_with_defaults(self, name: str) -> WorkerProcess:
        """Start worker ``name`` with the worker's own defaults for every limit (only where it runs and
        what it connects to are set)."""
        return self._start(WorkerProcess(name, self.region, self.env, {}, base={}))

    def _start(self, worker: WorkerProcess) -> WorkerProcess:
        self.all[worker.name] = worker
        worker.start()
        return worker

    def restart(self, worker: WorkerProcess) -> None:
        self.restarts += 1
        worker.start()

    async def __aenter__(self) -> Workers:
        self._supervisor = asyncio.create_task(self._supervise(), name="supervise-workers")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        for worker in self.all.values():
            worker.kill()

    async def _supervise(self) -> None:
        """A worker that exits on its own is counted, its last error kept, and started again (after a
        backoff that doubles while it keeps exiting soon after its start, as a process manager does)."""
        restart_at: dict[str, float] = {}
        while True:
            now = time.monotonic()
            for worker in self.all.values():
                if worker.child is None or worker.stopping or worker.alive():
                    continue
                if worker.name not in restart_at:
                    code = await worker.wait_exit(0)
                    last_error = (worker.errors() or ["no error in its log"])[-1]
                    self.unexpected_exits.append(f"{worker.node_id}: exit {code}: {last_error}")
                    log.warning("worker %s exited on its own (%s): %s", worker.node_id, code, last_error)
                    log.debug("the end of its log:\n%s", worker.tail())
                    self.env.on_event(f"worker {worker.node_id} exited on its own ({code})")
                    if not worker.supervised:
                        worker.stopping = True
                        continue
                    quick = now - worker.started_s < READY_TIMEOUT_S
                    worker.quick_exits = worker.quick_exits + 1 if quick else 0
                    restart_at[worker.name] = now + min(8.0, 0.25 * 2**worker.quick_exits)
                if now >= restart_at[worker.name]:
                    del restart_at[worker.name]
                    self.restart(worker)
            await asyncio.sleep(0.2)

    def count_log_lines(self, text: str) -> int:
        """Lines containing ``text`` in the logs of every incarnation of every worker."""
        return sum(
            line.count(text) > 0
            for w in self.all.values()
            for n in range(1, w.incarnation + 1)
            for line in w.log_text(n).splitlines()
        )

    async def stop_all(self) -> dict[str, int]:
        """SIGTERM every running worker; their exit codes."""
        running = [w for w in self.all.values() if w.alive()]
        codes = await asyncio.gather(*(w.stop() for w in running))
        return {w.node_id: code for w, code in zip(running, codes, strict=True)}
