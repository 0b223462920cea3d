"""The demo's edge workers: one ``edgestream worker`` process per region, each restartable.

Every worker is started with the environment the demo gives its region, its ready file and its stats
file; it is ready once the ready file exists. A worker may be stopped with a signal and started again
(the worker outage, ``outage.py``): the new incarnation appends to the region's log and writes a stats
file of its own, and :meth:`DemoWorkers.stats` adds the incarnations' counts up, so that the region's
row counts what both answered and dead-lettered. Every process started is stopped when the block of
:func:`running_workers` ends, however it ends.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any, Final

from edgestream.workers.edge.status import WorkerStats
from edgestream.workers.local.processes import Child, edgestream_command, stopped_at_exit

WorkerEnv = Callable[[str], Mapping[str, str]]
"""A region's worker environment, without its ready and stats files (``DemoWorkers`` names those)."""


class DemoWorkers:
    """The running workers, by region; started through :func:`running_workers`."""

    def __init__(
        self, regions: list[str], env_of: WorkerEnv, run_dir: Path, logs: Path, children: list[Child]
    ) -> None:
        self._env_of = env_of
        self._run_dir = run_dir
        self._logs = logs
        self._children = children
        """Every process started (the ones stopped too): ``stopped_at_exit`` stops those still running."""
        self.current: dict[str, Child] = {}
        """Region -> its worker process now."""
        self.stats_files: dict[str, list[Path]] = {region: [] for region in regions}
        """Region -> the stats file of each incarnation, in order."""

    def ready_file(self, region: str) -> Path:
        """The file ``region``'s worker writes once ready (removed at a clean exit)."""
        return self._run_dir / f"worker-{region}.ready"

    def start(self, region: str) -> Child:
        """Start ``region``'s worker (its next incarnation); not waited for."""
        incarnation = len(self.stats_files[region]) + 1
        suffix = "" if incarnation == 1 else f".{incarnation}"
        stats = self._run_dir / f"worker-{region}{suffix}.stats.json"
        ready = self.ready_file(region)
        stats.unlink(missing_ok=True)
        ready.unlink(missing_ok=True)  # a killed worker leaves its ready file behind
        env = {
            **self._env_of(region),
            "EDGESTREAM_WORKER_READY_FILE": str(ready),
            "EDGESTREAM_WORKER_STATS_FILE": str(stats),
        }
        child = Child.start(
            f"worker {region}" + (f" ({incarnation})" if incarnation > 1 else ""),
            edgestream_command("worker"),
            env=env,
            log_file=self._logs / f"worker-{region}.log",
            append=incarnation > 1,
        )
        self._children.append(child)
        self.current[region] = child
        self.stats_files[region].append(stats)
        return child

    def wait_ready(self, timeout_s: float) -> None:
        """Block until every current worker is ready (``ChildFailed`` when one exits or is late)."""
        for region, child in self.current.items():
            child.wait_ready(self.ready_file(region), timeout_s)

    async def stop(self, region: str, sig: signal.Signals) -> int:
        """Send ``region``'s worker ``sig`` and wait until it has exited (after SIGTERM, bounded as
        :meth:`Child.stop_async`); its exit status."""
        child = self.current[region]
        if sig == signal.SIGTERM:
            return await child.stop_async()
        child.send_signal(sig)  # SIGKILL: the kernel ends it, nothing to bound
        return await asyncio.to_thread(child.proc.wait)

    async def restart(self, region: str, ready_timeout_s: float) -> None:
        """Start ``region``'s worker again and wait until it is ready."""
        child = self.start(region)
        await child.wait_ready_async(self.ready_file(region), ready_timeout_s)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Region -> its workers' stats files at exit, the incarnations added up ({} when none was
        written)."""
        out: dict[str, dict[str, Any]] = {}
        for region, files in self.stats_files.items():
            merged: dict[str, Any] = {}
            for path in files:
                if path.exists():
                    merged = merge_stats(merged, json.loads(path.read_text()))
            out[region] = merged
        return out


COUNTERS: Final = frozenset(f.name for f in fields(WorkerStats))
"""The stats file's counters (``WorkerStats``): what two incarnations of a worker add up."""


def merge_stats(first: Mapping[str, Any], later: Mapping[str, Any]) -> dict[str, Any]:
    """Two incarnations' stats files as one: the counters added (a mapping of counts key by key), the
    rest (node, versions served, registry revisions) as the later one says."""
    out = {**first, **later}
    for key in COUNTERS & first.keys() & later.keys():
        before, after = first[key], later[key]
        if isinstance(after, dict):
            out[key] = {k: before.get(k, 0) + after.get(k, 0) for k in {*before, *after}}
        else:
            out[key] = before + after
    return out


@contextmanager
def running_workers(
    regions: list[str], env_of: WorkerEnv, run_dir: Path, logs: Path, ready_timeout_s: float
) -> Iterator[DemoWorkers]:
    """Start one worker per region and wait until each is ready; yield them; always stop them."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in run_dir.glob("worker-*.stats.json"):  # an earlier run's restarted worker's, say
        stale.unlink()
    with stopped_at_exit([]) as children:
        workers = DemoWorkers(regions, env_of, run_dir, logs, children)
        for region in regions:
            workers.start(region)
        workers.wait_ready(ready_timeout_s)
        yield workers
