"""Bounded waits of the demo before its devices start: the aggregator ready, every worker on the
registry revision the story starts from."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from pathlib import Path

from edgestream.pipeline.errors import EdgestreamError
from edgestream.pipeline.observability.catalogue import READY
from edgestream.workers.local.processes import Child, ChildFailed
from edgestream.workers.local.story import STORY_MODEL


class RevisionNotApplied(EdgestreamError):
    """The workers did not all apply the registry revision the story starts from in time."""

    reason = "demo"


def wait_aggregator_ready(aggregator: Child, url: str, timeout_s: float) -> None:
    """Wait until the aggregator says it is ready on ``/metrics`` (partitions assigned, tables
    recovered): it starts before the workers and the fleet, so its start-up is not on the 2 cores
    while the devices wait for answers. Raises :class:`ChildFailed` when it exits or is not ready in
    ``timeout_s``."""
    while True:
        try:
            with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
                text = response.read().decode("utf-8", "replace")
            if any(line.startswith(READY) and line.rstrip().endswith(" 1.0") for line in text.splitlines()):
                return
        except (OSError, urllib.error.URLError):
            pass  # not serving yet
        if not aggregator.running() or time.monotonic() - aggregator.started_s > timeout_s:
            raise ChildFailed(f"the aggregator was not ready in {timeout_s:g} s:\n{aggregator.tail()}")
        time.sleep(0.2)  # poll interval of a bounded wait on the aggregator's own readiness


def wait_for_revision(stats_files: dict[str, Path], revision: int, timeout_s: float) -> None:
    """Wait until every worker reports (in its stats file) the registry revision the story starts
    from; the files are rewritten as soon as a worker applies a state."""
    from edgestream.workers.rollout_controller import FileWorkerView

    view = FileWorkerView(next(iter(stats_files.values())).parent, pattern="worker-*.stats.json")
    deadline = time.monotonic() + timeout_s
    while True:
        applied = asyncio.run(view.revisions(STORY_MODEL))
        if len(applied) == len(stats_files) and all(r is not None and r >= revision for r in applied):
            return
        if time.monotonic() > deadline:
            raise RevisionNotApplied(
                f"workers did not all apply registry revision {revision} in {timeout_s:g} s"
            )
        time.sleep(0.2)  # poll interval of a bounded wait on the files' contents
