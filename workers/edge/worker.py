"""The edge worker: one asyncio process per region (one consumer group per region).

The hot path reads top to bottom:

    fetch (getmany) -> open + validate each envelope -> close a unit (size, age or latency budget)
    -> onnxruntime per (model, version) in a thread -> results, audit records, dead letters
    -> each answer's fast reply to its device, at once (``replies.py``)
    -> stage the unit; the commit stage (``commits.py``) commits staged units with the consumed
       offsets (a Kafka transaction per input partition, or one per worker, per commit) while the
       next unit is built

This module is the process: its lifecycle, the loop that processes units and what ties its parts
together. The rest of it lies beside it: ``settings.py``, ``clients.py`` (its consumer and sink),
``catalog.py`` (the models served), ``intake.py`` (the fetch loop: fetch and admit),
``positioning.py`` (which partitions are served, from where), ``admission.py`` (a record becomes an
item), ``inference.py``, ``outputs.py`` (what a unit publishes), ``replies.py`` (fast replies),
``commits.py`` (the commit stage), ``settlement.py`` (a commit's outcome: partitions kept or rewound),
``sinks.py`` and ``txnsink.py`` (how it commits), ``status.py`` (counters and run files) and
``service.py`` (the process around a worker).

Bad records go to the region's dead-letter topic with a reason code and never stop the partition.
Delivery is exactly-once by default (``workers/edge/sinks.py``); at-least-once is a setting. Memory is
bounded: the worker pauses its partitions while ``max_in_flight`` records are held and resumes at half.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from aiokafka import TopicPartition

from edgestream.pipeline.heap import freeze_startup_heap
from edgestream.pipeline.observability.health import Readiness
from edgestream.pipeline.observability.metrics import WorkerMetrics
from edgestream.pipeline.registry.reports import WorkerReport, WorkerReporter, report_of
from edgestream.pipeline.security.keyring import KeyRing
from edgestream.pipeline.security.keysource import KeyFileWatcher
from edgestream.pipeline.serving.auditchain import AuditChain, chain_id
from edgestream.pipeline.serving.batching import Batch, MicroBatcher, ServiceTimeEstimate
from edgestream.pipeline.serving.served import ModelCatalog, ServedModel
from edgestream.topics.catalogue import KINDS, ingest_topic
from edgestream.workers.edge.admission import Admission, Item
from edgestream.workers.edge.catalog import worker_catalog
from edgestream.workers.edge.clients import FailingListener, consumer_of, owned_commit, sink_of
from edgestream.workers.edge.commits import CommitStage, StagedUnit
from edgestream.workers.edge.fetching import Fetches, idle_aiokafka_fetcher
from edgestream.workers.edge.following import RegistryFollowing
from edgestream.workers.edge.inference import UnitInference
from edgestream.workers.edge.intake import Intake
from edgestream.workers.edge.observe import note_models
from edgestream.workers.edge.outputs import UnitOutputs
from edgestream.workers.edge.positioning import Partitions
from edgestream.workers.edge.replaymemory import ReplayMemory
from edgestream.workers.edge.replies import ReplySender
from edgestream.workers.edge.settings import WorkerSettings
from edgestream.workers.edge.settlement import Settlement
from edgestream.workers.edge.status import WorkerStats, write_ready_file, write_stats_file
from edgestream.workers.edge.tracing import unit_tracer

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

log = logging.getLogger(__name__)


class EdgeWorker:
    """Consumes a region's ingest topics, infers in micro-batches, publishes results and audit.

    Work moves in *units*: the records fetched since the previous unit closed. A unit closes when it
    holds ``max_batch`` records, when its first record has waited ``max_wait_ms``, or earlier when the
    tightest latency budget among its records would otherwise be missed. Units are processed one at a
    time while the next one fills, so each partition's records in a unit form a contiguous offset
    range, and the unit's outputs and offsets commit together through the sink.
    """

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        keyring: KeyRing | KeyFileWatcher,
        models: Mapping[str, ServedModel],
        metrics: WorkerMetrics | None = None,
        readiness: Readiness | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.settings = settings
        self.node_id = settings.resolved_node_id()
        self.stats = WorkerStats()
        self.metrics = metrics or WorkerMetrics(region=settings.region, node=self.node_id)
        self.readiness = readiness or Readiness(stall_after_s=settings.stall_after_s)
        # With the registry, the models are loaded once its current states are applied (start()).
        self.readiness.models_loaded = not settings.registry
        self.metrics.watch_ready(self.readiness.ready)
        self._region = settings.region
        keys = keyring if isinstance(keyring, KeyFileWatcher) else KeyFileWatcher.fixed(keyring)
        self._chains = AuditChain()
        self._catalog = worker_catalog(
            settings, models, keys.current(), on_refused=self.metrics.registry_refused
        )
        note_models(self.metrics, self._catalog)
        self._estimate = ServiceTimeEstimate()
        self._open: MicroBatcher[Item] = MicroBatcher(
            settings.max_batch, settings.max_wait_ms, self._estimate
        )
        self._inference = UnitInference(
            self.stats,
            self.metrics,
            sample_fraction=settings.sample_fraction,
            inline_max_ms=settings.inline_inference_ms,
        )
        self.traces = unit_tracer(tracer, settings.region)  # tracing off (None): nothing per unit
        self._outputs = UnitOutputs(self._region, self.node_id, self._chains, cloud=settings.cloud)
        self.consumer = consumer_of(settings, self.node_id)
        self.sink = sink_of(
            settings, self.node_id, commit=owned_commit(self.consumer), consumer=self.consumer
        )
        self.replies = ReplySender(settings.kafka, self.node_id)
        self._admission = Admission(settings, self._catalog, self.consumer.partitions_for_topic)
        memory = ReplayMemory(settings, self._admission, lambda: self._intake.keyring, self.node_id)
        self.fetches = Fetches(self.consumer, max_wait_ms=settings.fetch_max_wait_ms)
        self._partitions = Partitions(self.consumer, self.fetches, self._chains, memory.rebuild)
        self._wakeup = asyncio.Event()
        self._released = asyncio.Event()  # the commit stage's ``settled``: room for the paused intake
        self._intake = self._intake_of(settings, keys)
        self._settlement, self.commits = self._commit_path(settings)
        self._following = (
            RegistryFollowing(settings, self._catalog, self._registry_applied) if settings.registry else None
        )
        self._report_now = asyncio.Event()
        self._reporter = (
            WorkerReporter(settings.kafka, self.node_id, settings.region, self._report)
            if settings.registry
            else None
        )
        self._process_lock = asyncio.Lock()
        self._processing = 0  # records of the unit being built
        self._stats_written_s = time.monotonic()
        self._ready = False
        self._stopped = False
        self._draining = False  # stop requested: commit what is fetched, fetch nothing more
        self._abandoned = False  # the drain timed out: nothing more may commit in this process
        self._fatal: BaseException | None = None

    def _intake_of(self, settings: WorkerSettings, keys: KeyFileWatcher) -> Intake:
        """The fetch-and-admit stage: it fills the open unit and wakes the unit loop."""
        return Intake(
            self.fetches,
            settings,
            keys=keys,
            admission=self._admission,
            partitions=self._partitions,
            open_unit=self._open,
            stats=self.stats,
            metrics=self.metrics,
            readiness=self.readiness,
            held=self._held,
            fetched=self._wakeup.set,
            tick=self._tick,
            released=self._released,
        )

    def _commit_path(self, settings: WorkerSettings) -> tuple[Settlement, CommitStage]:
        """How processed units commit: the stage that groups them into commits, and the settlement
        that turns a commit's outcome into partitions kept or rewound (and room for the intake)."""
        settlement = Settlement(
            self.sink,
            admission=self._admission,
            chains=self._chains,
            partitions=self._partitions,
            open_unit=self._open,
            stats=self.stats,
            metrics=self.metrics,
            readiness=self.readiness,
            retry_backoff_max_ms=settings.retry_backoff_max_ms,
            draining=lambda: self._draining,
            refuse=self._outputs.refuse,
        )
        commits = CommitStage(
            self._partitions.serving,
            settlement.commit,
            interval_ms=settings.commit_interval_ms,
            one_commit=self.sink.one_commit,
            settled=self._released,
        )
        return settlement, commits

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """With the registry, apply its current states first (``following.py``: raises
        :class:`RegistryNotReady` when they cannot be, before anything else started); then start the
        sink and subscribe the consumer to the region's ingest topics, and with the registry, start
        reporting on ``control.workers`` what this worker applied. The group is joined only now, so no
        record is fetched, and the worker is not ready, before the registry's states are applied."""
        if self._following is not None:
            await self._following.start()
            self.readiness.models_loaded = True
            self.readiness.progress()  # loading counted against stall_after_s; it is done
            self._registry_applied()
        try:
            await self._start_clients()
        except BaseException:
            if self._following is not None:
                await self._following.stop()
            raise

    async def _start_clients(self) -> None:
        await self.sink.start()
        try:
            await self.replies.start()
            topics = [ingest_topic(self._region, kind) for kind in KINDS]
            self.consumer.subscribe(
                topics, listener=FailingListener(self._on_revoked, self._on_assigned, self._fail)
            )
            await self.consumer.start()
            if self._reporter is not None:
                await self._reporter.start()
        except BaseException:
            await self.replies.stop()
            await self.sink.stop()
            raise

    def _report(self) -> WorkerReport:
        served = self._catalog.served_versions()
        revisions = {name: self._catalog.revision(name) for name in served}
        return report_of(self.node_id, self._region, revisions, served)

    async def stop(self) -> None:
        """Finish and commit the open unit, leave the group. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.readiness.partitions_assigned = 0  # draining: take no new traffic
        self.metrics.set_partitions(0)
        try:
            if self._fatal is None and not self._abandoned:
                async with self._process_lock:
                    for unit in self._open.drain():
                        await self._process(unit)
                    await self.commits.flush()
        finally:
            await self.fetches.close()
            await self.consumer.stop()
            await self.replies.stop()
            await self.sink.stop()
            if self._reporter is not None:
                await self._reporter.stop()
            if self._following is not None:
                await self._following.stop()
            self._inference.shutdown()
            self._write_stats()
            if self.settings.ready_file is not None:
                self.settings.ready_file.unlink(missing_ok=True)

    async def __aenter__(self) -> EdgeWorker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set (SIGTERM), then drain: fetch no more, let the unit in flight finish
        its transaction and commit the units already fetched, in order.

        The unit in flight is never cancelled half-way: its transaction would be left open and, worse,
        the units behind it could commit offsets past its records. If the drain takes longer than
        ``drain_timeout_s`` (the broker is gone), it is abandoned and nothing more commits here; the
        next owner re-reads from the committed offsets.

        A fatal error (fenced by a newer owner of a partition; in at-least-once mode, a produce or commit
        that failed after the client's retries) ends the run with that error. Nothing uncommitted is
        lost: the next owner re-reads from the committed offsets.
        """
        freeze_startup_heap("worker")
        fetch = asyncio.create_task(self._intake.run(), name="fetch")
        process = asyncio.create_task(self._process_loop(), name="process")
        commit = asyncio.create_task(self.commits.run(), name="commit")
        stopper = asyncio.create_task(stop.wait(), name="stop")
        tasks = [fetch, process, commit]
        if self._following is not None:
            tasks.append(asyncio.create_task(self._following.run(), name="registry"))
        if self._reporter is not None:
            reporting = self._reporter.run(self.settings.stats_interval_s, self._report_now)
            tasks.append(asyncio.create_task(reporting, name="report"))
        try:
            done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
            self._note_fatal(done - {stopper})
            if self._fatal is None:
                await self._drain(fetch, process, commit)
        finally:
            for task in [*tasks, stopper]:
                task.cancel()
            await asyncio.gather(*tasks, stopper, return_exceptions=True)
        if self._fatal is not None:
            raise self._fatal

    def _note_fatal(self, tasks: set[asyncio.Task[Any]]) -> None:
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                self._fatal = self._fatal or task.exception()
                self.readiness.fail(repr(self._fatal))

    async def _drain(
        self, fetch: asyncio.Task[None], process: asyncio.Task[None], commit: asyncio.Task[None]
    ) -> None:
        fetch.cancel()  # a getmany or a seek may stop anywhere: nothing of it is committed state
        await asyncio.gather(fetch, return_exceptions=True)
        self._draining = True
        self.readiness.partitions_assigned = 0  # take no new traffic
        self._wakeup.set()
        held = self._held()
        started_s = time.monotonic()
        done, _ = await asyncio.wait([process], timeout=self.settings.drain_timeout_s)
        if not done:
            self._abandoned = True
            log.error(
                "drain abandoned after %.0f s with %d records held; the next owner re-reads them",
                self.settings.drain_timeout_s,
                self._held(),
            )
            return
        self._note_fatal({process, commit})
        log.info("drained %d records in %.2f s", held, time.monotonic() - started_s)

    # -- fetch and admit (intake.py) ----------------------------------------------------------------

    @property
    def keyring(self) -> KeyRing:
        """The ring the last fetch's records were admitted with."""
        return self._intake.keyring

    def _tick(self) -> None:
        """After each fetch: the stats file, every ``stats_interval_s``."""
        if time.monotonic() - self._stats_written_s >= self.settings.stats_interval_s:
            self._write_stats()

    def _fail(self, err: BaseException) -> None:
        log.error("fatal: %r", err)
        self.readiness.fail(repr(err))
        if self._fatal is None:
            self._fatal = err
        self._wakeup.set()

    def _held(self) -> int:
        return len(self._open) + self._processing + self.commits.held()

    def _registry_applied(self) -> None:
        self._write_stats()  # the rollout controller sees the new revision now
        self._report_now.set()
        note_models(self.metrics, self._catalog)

    @property
    def catalog(self) -> ModelCatalog:
        """The models served now, and registry states refused."""
        return self._catalog

    # -- process a unit: infer, build outputs, commit ------------------------------------------------

    async def _process_loop(self) -> None:
        while True:
            if self._fatal is not None:
                raise self._fatal
            self._wakeup.clear()
            async with self._process_lock:
                draining = self._draining
                for unit in self._open.drain() if draining else self._open.pop_ready(time.monotonic()):
                    await self._process(unit)
                if draining:
                    await self.commits.flush()
            if draining:
                return
            due_s = self._open.next_due_s()
            timeout_s = None if due_s is None else max(0.0, due_s - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout_s)

    async def _process(self, unit: Batch[Item]) -> None:
        """Admit, infer and build the unit's outputs, send its fast replies, stage it for its commit."""
        # A unit popped together with one whose transaction failed may hold records of the partition
        # that was just rewound, even once it is positioned again (the rewind's backoff lets the fetch
        # loop run): they come again from its committed offset, so only the current epoch's stay.
        items = self._current(unit.items)
        if not items:
            return
        self._processing = len(items)
        started_s = time.monotonic()
        trace = self.traces.unit(items, unit.reason)
        try:
            self._admission.check(items)
            trace.mark("admission")
            await self._inference.infer(items)
            trace.mark("inference")
            # A commit failing meanwhile may have rewound a partition (and forgotten its chain): its
            # items are dropped here, before anything links into that chain (no await from here on).
            items = self._current(items)
            work = self._outputs.build(items, started_s, self._intake.keyring)
            trace.mark("output")
            await self.replies.send(work.values())
            trace.mark("reply")
        except BaseException:
            self._settlement.abort({it.tp for it in items})
            raise
        finally:
            self._processing = 0
        self.commits.stage(
            StagedUnit(items, work, unit.reason, trace, started_s=started_s, replied_ms=time.time() * 1000.0)
        )
        self._estimate.observe(time.monotonic() - started_s)

    def _current(self, items: Iterable[Item]) -> list[Item]:
        serving = self._partitions.serving
        return [it for it in items if serving.get(it.tp) == it.epoch]

    # -- rebalance ---------------------------------------------------------------------------------

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        if self._stopped or self._fatal is not None:
            return
        async with self._process_lock:  # the unit in flight and the staged ones commit (or fail) first
            await self.commits.flush()
            self._partitions.revoked(revoked)
            for tp in revoked:
                self._admission.replays.forget(tp)
                self._chains.forget(chain_id(tp.topic, tp.partition))
            self._set_partitions()
            self._open.remove(lambda it: it.tp in revoked)
            await self.sink.revoked(revoked)

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        idle_aiokafka_fetcher(self.consumer, assigned)  # the worker fetches them itself
        # Producers first (fencing the partitions' previous owners), then positions: records fetched
        # before both are in place are dropped and read again from the committed offsets.
        await self.sink.assigned(assigned)
        self._partitions.assigned(assigned)
        self._set_partitions()
        log.info("assigned %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))
        if self.settings.ready_file is not None and not self._ready:
            self._ready = True
            write_ready_file(self.settings.ready_file, self.node_id, self._region, len(assigned))

    def _set_partitions(self) -> None:
        n = len(self._partitions)
        self.readiness.partitions_assigned = n
        self.metrics.set_partitions(n)

    def _write_stats(self) -> None:
        if self.settings.stats_file is None:
            return
        self._stats_written_s = time.monotonic()
        write_stats_file(self.settings.stats_file, self.node_id, self._region, self._catalog, self.stats)
