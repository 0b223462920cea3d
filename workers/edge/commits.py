"""The worker's second stage: commit what the first stage built, in order, while it builds the next.

The first stage (the process loop) takes a closed unit through admission, inference and output
building, sends each answer's fast reply at once (``workers/edge/replies.py``) and *stages* the unit
here. This stage commits staged units through the sink, oldest first. While one commit is in flight,
the units staged meanwhile wait, and the next commit takes all of them in one go: a partition's outputs
of several units are one `PartitionWork` (its offset and chain head are the last unit's). Commits start
at most once per ``interval_ms`` (as Kafka Streams' ``commit.interval.ms``): devices do not wait for
commits, so fewer, larger transactions cost them nothing and save the worker and the broker a fixed
cost per transaction; inference never waits for a commit.

A partition rewound after a failed commit (its epoch changed) drops its staged work: its records come
again from the committed offset. Everything here runs on the worker's event loop; ``flush`` is the one
way to wait until everything staged so far is committed (a rebalance, a drain).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from aiokafka import TopicPartition

from edgestream.pipeline.contract.cloud import PartialSummary
from edgestream.topics.catalogue import SUMMARIES_TOPIC
from edgestream.workers.edge.admission import Item
from edgestream.workers.edge.sinks import Output, PartitionWork
from edgestream.workers.edge.tracing import NO_TRACE, NoTrace


@dataclass(frozen=True, slots=True)
class StagedUnit:
    """A unit whose answers are built (and replied to), waiting for its commit."""

    items: Sequence[Item]
    """Its items in offset order per partition, answered or refused."""
    work: Mapping[TopicPartition, PartitionWork]
    """Each input partition's outputs, offset and chain head."""
    reason: str
    """Why the unit closed (size, age, deadline, drain)."""
    trace: NoTrace = NO_TRACE
    """Its spans (``workers/edge/tracing.py``), ended by its commit; `NO_TRACE` when untraced."""
    started_s: float | None = None
    """Monotonic time its processing started (None: not known)."""
    replied_ms: float | None = None
    """Wall-clock time its fast replies were sent (None: none sent)."""


Commit = Callable[[Sequence[StagedUnit], dict[TopicPartition, PartitionWork]], Awaitable[None]]
"""Commits the merged work of some staged units (the units are passed on for counting)."""


def merge(
    units: Sequence[StagedUnit], serving: Mapping[TopicPartition, int], *, one_commit: bool = False
) -> dict[TopicPartition, PartitionWork]:
    """One `PartitionWork` per partition over ``units`` (oldest first): outputs in order, the last
    unit's offset and chain head, and after the outputs one cloud summary per (model, version), the sum
    of the units' (``PartitionWork.summaries``; the units' own are left as they were). A partition
    whose work was built under an epoch it is no longer served in is left out: it was rewound, and its
    records come again.

    With ``one_commit`` (the partitions commit or fail together, ``Sink.one_commit``), one summary per
    (model, version) over all partitions, after the last partition's outputs; else one per partition
    (each commits on its own, and its summary counts exactly its records)."""
    merged: dict[TopicPartition, PartitionWork] = {}
    summaries: dict[TopicPartition | None, dict[tuple[str, int], PartialSummary]] = {}
    for unit in units:
        for tp, part in unit.work.items():
            if serving.get(tp) != part.epoch:
                continue
            into = merged.get(tp)
            if into is None:
                merged[tp] = PartitionWork(list(part.outputs), part.next_offset, part.metadata, part.epoch)
            else:
                into.outputs.extend(part.outputs)
                into.next_offset = max(into.next_offset, part.next_offset)
                into.metadata = part.metadata
            totals = summaries.setdefault(None if one_commit else tp, {})
            for key, summary in part.summaries.items():
                total = totals.get(key)
                if total is None:
                    total = totals[key] = PartialSummary(
                        summary.region, summary.node, summary.model, summary.model_version, summary.at_ms
                    )
                total.absorb(summary)
    for on, totals in summaries.items():
        # One commit: after the last partition's outputs (there is one: totals come from merged work).
        into = merged[on] if on is not None else merged[next(reversed(merged))]
        into.outputs.extend(Output(SUMMARIES_TOPIC, s.to_bytes(), s.key) for s in totals.values())
    return merged


class CommitStage:
    """Staged units, committed oldest first, as many at once as waited for the previous commit."""

    def __init__(
        self,
        serving: Mapping[TopicPartition, int],
        commit: Commit,
        *,
        interval_ms: float = 0.0,
        one_commit: bool = False,
        settled: asyncio.Event | None = None,
    ) -> None:
        self._serving = serving
        self._commit = commit
        self.one_commit = one_commit
        """``merge``'s: the partitions commit together, one cloud summary per (model, version) for all."""
        self._interval_s = interval_ms / 1000.0
        self._started_s = -float("inf")  # when the last commit started
        self._staged: list[StagedUnit] = []
        self._committing = 0
        self._lock = asyncio.Lock()
        self._ready = asyncio.Event()
        self._failed: BaseException | None = None
        self.settled = settled if settled is not None else asyncio.Event()
        """Set each time a commit ends, committed or failed: its records are no longer held. The intake,
        paused by backpressure, waits on it to resume the moment there is room."""
        self.commits = 0
        """Commits made (each may hold several units)."""
        self.units = 0
        """Units committed (or dropped as rewound)."""

    def stage(self, unit: StagedUnit) -> None:
        """Queue ``unit`` for the next commit. Raises the error a commit raised, if one did."""
        if self._failed is not None:
            raise self._failed
        self._staged.append(unit)
        self._ready.set()

    def held(self) -> int:
        """Records staged or in the commit in flight (for backpressure)."""
        return self._committing + sum(len(unit.items) for unit in self._staged)

    async def flush(self) -> None:
        """Return once everything staged before the call is committed (or failed and rewound).

        A commit that *raises* (rather than reporting failed partitions, which are rewound) leaves its
        records' fate to the next owner: nothing staged after it may commit, since its offsets would
        pass records whose outputs never committed. The stage keeps that error and raises it from every
        later ``flush`` and ``stage``; the units staged behind it are dropped."""
        async with self._lock:
            if self._failed is not None:
                raise self._failed
            while self._staged:
                await self._commit_staged()

    async def _commit_staged(self) -> None:
        """Commit what is staged now, in one commit (the caller holds the lock)."""
        if self._failed is not None:
            raise self._failed
        units, self._staged = self._staged, []
        self._started_s = time.monotonic()
        started_ns = time.time_ns()
        self._committing = sum(len(unit.items) for unit in units)
        try:
            merged = merge(units, self._serving, one_commit=self.one_commit)
            await self._commit(units, merged)
        except BaseException as err:
            self._failed = err
            self._staged.clear()
            for unit in units:
                unit.trace.committed(started_ns, err)
            raise
        finally:
            self._committing = 0
            self.settled.set()
        for unit in units:
            unit.trace.committed(started_ns)
        self.commits += 1
        self.units += len(units)

    async def run(self) -> None:
        """Commit whatever is staged, at most one commit start per ``interval_ms``, until cancelled
        (between commits: a cancel that lands while a commit is in flight is the caller's to avoid, by
        flushing first). ``flush`` itself never waits for the interval."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            wait_s = self._started_s + self._interval_s - time.monotonic()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            async with self._lock:  # one commit; what is staged meanwhile waits for the interval
                if self._staged:
                    await self._commit_staged()
