"""The edge worker: one asyncio process per region (one consumer group per region).

The hot path reads top to bottom:

    fetch (getmany) -> open + validate each envelope -> close a unit (size, age or latency budget)
    -> onnxruntime per (model, version) in a thread -> results, audit records, dead letters
    -> commit them with the consumed offsets (one Kafka transaction per input partition)

Bad records go to the region's dead-letter topic with a reason code and never stop the partition.
Delivery is exactly-once by default (``workers/edge/sinks.py``); at-least-once is a setting. Memory is
bounded: the worker pauses its partitions while ``max_in_flight`` records are held and resumes at half.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError
from aiokafka.structs import OffsetAndMetadata
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgestream.pipeline.contract.cloud import PartialSummary, Sample, pseudonym
from edgestream.pipeline.contract.codec import decode_tensor
from edgestream.pipeline.contract.deadletter import attempt_of, dead_letter_headers
from edgestream.pipeline.contract.envelope import (
    AuditRecord,
    Envelope,
    ResultRecord,
    decode_envelope,
    open_envelope,
)
from edgestream.pipeline.errors import (
    ContractError,
    EdgestreamError,
    InferenceFailed,
)
from edgestream.pipeline.observability.health import HealthServer, Readiness
from edgestream.pipeline.observability.metrics import WorkerMetrics
from edgestream.pipeline.registry import LocalArtifactStore, SignedManifest, TrustedKeys
from edgestream.pipeline.registry.client import RegistryClient
from edgestream.pipeline.registry.loader import verified_artifact
from edgestream.pipeline.registry.reports import WorkerReport, WorkerReporter, report_of
from edgestream.pipeline.security.derive import pseudonym_key, routing_key
from edgestream.pipeline.security.keyring import KeyRing
from edgestream.pipeline.security.keysource import KeyFileWatcher, KeySource
from edgestream.pipeline.serving.auditchain import AuditChain, ChainHead, MalformedChainHead, chain_id
from edgestream.pipeline.serving.batching import Batch, MicroBatcher, ServiceTimeEstimate
from edgestream.pipeline.serving.ratelimit import DeviceRateLimiter
from edgestream.pipeline.serving.replay import ReplayGuard
from edgestream.pipeline.serving.served import (
    Loader,
    ModelCatalog,
    ModelKey,
    ServedModel,
    load_models,
    open_model,
)
from edgestream.pipeline.settings import DEFAULT_HOME, KafkaSettings
from edgestream.topics.catalogue import (
    KINDS,
    SAMPLES_TOPIC,
    SUMMARIES_TOPIC,
    audit_topic,
    dlq_topic,
    edge_group,
    ingest_topic,
    results_topic,
)
from edgestream.workers.edge.offsets import Committed, UnstableOffsets, stable_committed
from edgestream.workers.edge.sinks import AckSink, Output, PartitionWork, Sink, TransactionalSink

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

log = logging.getLogger(__name__)

POSITION_TIMEOUT_S = 2.0
"""How long one round of positioning waits for stable committed offsets before fetching for the
partitions already in service again (the rest are tried next round)."""
UNIT = "unit"
"""The batcher's one key: a unit holds every record fetched since the previous unit closed."""


class WorkerSettings(BaseSettings):
    """Settings of one edge worker process (``EDGESTREAM_WORKER_*``, nested with ``__``)."""

    model_config = SettingsConfigDict(
        env_prefix="EDGESTREAM_WORKER_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    region: str = "eu-west"
    """The region this worker serves; it consumes ``edge.<region>.ingest.*``."""
    node_id: str | None = None
    """Name of this node in results and audit records; defaults to ``<region>-<host>-<pid>``."""
    kafka: KafkaSettings = KafkaSettings()
    """How to reach the brokers."""
    home: Path = DEFAULT_HOME
    """Local state directory: key file, model cache, run files."""
    key_file: Path | None = None
    """Region master keys (JSON, mode 0600); defaults to ``<home>/keys.json``. Re-read when it changes,
    so a rotation (``edgestream keys rotate``) takes effect without a restart."""
    keys_secret: SecretStr | None = Field(default=None, validation_alias="EDGESTREAM_KEYS")
    """The key file's JSON itself, from the ``EDGESTREAM_KEYS`` secret, instead of ``key_file``."""
    models: tuple[str, ...] = ("embedding-scorer", "frame-classifier")
    """Model families this worker serves."""
    model_size: Literal["tiny", "medium", "full"] = "medium"
    """Which size of each family to serve."""
    delivery: Literal["exactly_once", "at_least_once"] = "exactly_once"
    """exactly_once: outputs and offsets commit in one Kafka transaction per input partition and unit;
    a crash or abort repeats nothing a read_committed reader sees. at_least_once: outputs are
    acknowledged, then offsets committed; cheaper (no transaction round trips), but a crash between the
    two repeats that unit's outputs."""
    max_batch: int = Field(default=64, ge=1)
    """Most records in one unit of work (and so in one onnxruntime call per model)."""
    max_wait_ms: float = Field(default=4.0, ge=0)
    """Longest the first record of a unit waits for the unit to fill."""
    sla_ms: float = Field(default=50.0, gt=0)
    """End-to-end latency budget from capture time; batches close early to meet it."""
    max_in_flight: int = Field(default=2048, ge=1)
    """Records held (fetched, not yet committed) before the worker pauses its partitions."""
    fetch_max_records: int = Field(default=500, ge=1)
    """Upper bound on records returned by one ``getmany``."""
    max_envelope_bytes: int = Field(default=1 << 20, ge=256)
    """Records larger than this are dead-lettered before parsing."""
    max_body_bytes: int = Field(default=4 << 20, ge=256)
    """Decompressed bodies larger than this are refused (decompression bombs)."""
    max_age_ms: int = Field(default=60_000, ge=1)
    """A capture time older than this is refused as stale (and bounds how long ids are remembered)."""
    max_future_skew_ms: int = Field(default=5_000, ge=0)
    """A capture time further than this in the future is refused as stale (device clock ahead)."""
    max_replay_ids_per_partition: int = Field(default=200_000, ge=1)
    """Request ids remembered per input partition; past it the oldest go and the age limit tightens."""
    device_rate_per_s: float = Field(default=50.0, gt=0)
    """Sustained requests per second one device may send; more are dead-lettered as rate_limited."""
    device_burst: int = Field(default=100, ge=1)
    """Requests a device may send at once above its rate."""
    max_tracked_devices: int = Field(default=100_000, ge=1)
    """Rate-limit buckets kept; the least recently used go first."""
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    """onnxruntime execution providers, in order of preference."""
    intra_op_threads: int = Field(default=1, ge=1)
    """onnxruntime intra-op threads; 1 leaves the other core to the event loop and the broker."""
    transaction_timeout_ms: int = Field(default=60_000, ge=1000)
    """Broker aborts a transaction left open longer than this (a worker that died mid-commit)."""
    retry_backoff_max_ms: int = Field(default=5_000, ge=1)
    """Upper bound of the backoff between retries of a partition whose transaction failed."""
    health_host: str = "127.0.0.1"
    """Where /livez, /readyz and /metrics listen (0.0.0.0 in a pod)."""
    health_port: int | None = None
    """Port of the health and metrics server: None for no server, 0 for any free port."""
    stall_after_s: float = Field(default=30.0, gt=0)
    """Not live when the main loop has made no progress for this long."""
    cloud: bool = True
    """Send the cloud partial window summaries (every transaction) and anonymised samples, in the same
    transactions as the results they describe (``pipeline/contract/cloud.py``)."""
    sample_fraction: float = Field(default=0.1, ge=0, le=1)
    """Share of answered embedding requests sent to ``cloud.samples`` (chosen by request id, so a
    retried transaction samples the same ones). Frames are never sampled."""
    registry: bool = False
    """Follow the model registry (``control.models``): serve the versions each model's state names,
    each verified (sha256 and Ed25519 signature) before it loads, and route each device to stable or
    canary; report the revisions applied on ``control.workers`` (the rollout's lag guard). Without it,
    the worker serves ``model_size`` of each family, built locally."""
    registry_home: Path | None = None
    """Artifact store and trusted keys of the registry; defaults to ``<home>/registry``."""
    routing_key: SecretStr | None = None
    """Key of the device hash that picks stable or canary; defaults to one derived from the region's
    current master key (so every worker of a region routes a device the same way)."""
    drain_timeout_s: float = Field(default=30.0, gt=0)
    """At a stop, how long the unit in flight and the units already fetched may take to commit. Past
    it the worker gives up on them (nothing later commits either) and the next owner re-reads them."""
    ready_file: Path | None = None
    """Written (JSON) once models are loaded and partitions assigned; removed at exit."""
    stats_file: Path | None = None
    """Written (JSON, atomically) with this worker's counters, the versions it serves and the registry
    revisions it applied: every ``stats_interval_s``, after each registry state applied, and at exit.
    The rollout controller reads the revisions there (``pipeline/learning/rollout.py``)."""
    stats_interval_s: float = Field(default=5.0, gt=0)
    """How often the stats file is rewritten while the worker runs."""

    def resolved_node_id(self) -> str:
        """``node_id`` or ``<region>-<host>-<pid>``."""
        return self.node_id or f"{self.region}-{socket.gethostname()}-{os.getpid()}"


class Answer(NamedTuple):
    """What the model said about one item, and how it was computed."""

    label: int
    """Predicted class."""
    scores: tuple[float, ...]
    """Class probabilities."""
    infer_ms: float
    """Duration of the onnxruntime call that computed it."""
    batch_size: int
    """Size of that call's batch."""


@dataclass(slots=True)
class Item:
    """One fetched record on its way through the worker: admitted, or already known to be bad."""

    tp: TopicPartition
    """Where it came from."""
    epoch: int
    """The positioning of ``tp`` it was fetched in (see ``EdgeWorker._serving``)."""
    offset: int
    """Its offset there."""
    timestamp_ms: int
    """The record's Kafka timestamp."""
    key: bytes | None
    """The record's key (the device id), kept for its dead letter."""
    headers: tuple[tuple[str, bytes], ...]
    """The record's own headers (traceparent, replay marks), carried onto its dead letter."""
    raw: bytes
    """The record exactly as received (still sealed): a dead letter's value."""
    arrived_s: float
    """Monotonic time the worker admitted it."""
    envelope: Envelope | None = None
    """The decoded envelope (fields outside the ciphertext), when decoding got that far."""
    tensor: np.ndarray[Any, Any] | None = None
    """The decrypted input, in memory only; None when the record is bad."""
    model: ServedModel | None = None
    """The model that will answer it."""
    error: EdgestreamError | None = None
    """Why the record goes to the dead-letter topic, if it does."""
    answer: Answer | None = None
    """The model's answer, once inferred."""
    features: tuple[float, ...] | None = None
    """The input vector kept for a cloud sample (sampled embeddings only), until outputs are built."""


@dataclass(slots=True)
class WorkerStats:
    """Counters a worker reports at exit (and the demo summarises). Counted once committed."""

    consumed: int = 0
    """Records fetched."""
    results: int = 0
    """Results committed."""
    units: int = 0
    """Units of work committed (a unit: the records fetched since the previous one closed)."""
    dead_letters: Counter[str] = field(default_factory=Counter)
    """Dead letters committed, by reason code."""
    batch_sizes: Counter[int] = field(default_factory=Counter)
    """How many onnxruntime calls ran at each batch size."""
    close_reasons: Counter[str] = field(default_factory=Counter)
    """Why units closed: full, max_wait, deadline, drain."""
    pauses: int = 0
    """Times the partitions were paused for backpressure."""
    rewinds: int = 0
    """Times a partition was re-read from its committed offset after a failed transaction."""
    refetched: int = 0
    """Records the client fetched a second time (and the worker admitted once)."""
    infer_s: float = 0.0
    """Seconds spent in onnxruntime."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "consumed": self.consumed,
            "results": self.results,
            "units": self.units,
            "dead_letters": dict(self.dead_letters),
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
            "close_reasons": dict(self.close_reasons),
            "pauses": self.pauses,
            "rewinds": self.rewinds,
            "refetched": self.refetched,
            "infer_s": round(self.infer_s, 4),
        }


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: EdgeWorker) -> None:
        self._worker = worker

    # aiokafka logs and swallows a listener's exception; here it ends the worker instead, since a
    # partition without its producer or position cannot be served safely.
    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        try:
            await self._worker._on_revoked(revoked)
        except Exception as err:
            self._worker._fail(err)
            raise

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        try:
            await self._worker._on_assigned(assigned)
        except Exception as err:
            self._worker._fail(err)
            raise


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
    ) -> None:
        self.settings = settings
        self.node_id = settings.resolved_node_id()
        self._report_now = asyncio.Event()
        self._reporter = (
            WorkerReporter(settings.kafka, self.node_id, settings.region, self._report)
            if settings.registry
            else None
        )
        self.stats = WorkerStats()
        self.metrics = metrics or WorkerMetrics(region=settings.region, node=self.node_id)
        self.readiness = readiness or Readiness(stall_after_s=settings.stall_after_s)
        self.readiness.models_loaded = True
        for served in models.values():
            a = served.artifact
            self.metrics.model_info(a.name, a.version, a.sha256, served.session.providers_in_use[0])
        self._region = settings.region
        self._group_id = edge_group(settings.region)
        self._keys = keyring if isinstance(keyring, KeyFileWatcher) else KeyFileWatcher.fixed(keyring)
        self._keyring = self._keys.current()
        self._chains = AuditChain()
        self._catalog = ModelCatalog(models, routing_key=self._routing_key(), loader=self._registry_loader())
        self._estimate = ServiceTimeEstimate()
        self._open: MicroBatcher[str, Item] = MicroBatcher(
            settings.max_batch, settings.max_wait_ms, self._estimate
        )
        self._replays: ReplayGuard[TopicPartition] = ReplayGuard(
            window_ms=settings.max_age_ms + settings.max_future_skew_ms,
            max_age_ms=settings.max_age_ms,
            max_future_skew_ms=settings.max_future_skew_ms,
            max_entries_per_partition=settings.max_replay_ids_per_partition,
        )
        self._rate = DeviceRateLimiter(
            rate_per_s=settings.device_rate_per_s,
            burst=settings.device_burst,
            max_devices=settings.max_tracked_devices,
        )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infer")
        self._wakeup = asyncio.Event()
        self._process_lock = asyncio.Lock()
        self._processing = 0
        # Partitions assigned, with their producer started and their position set, each with the
        # *epoch* of that positioning: a record belongs to the epoch it was fetched in, and only records
        # of a partition's current epoch are processed. After a rewind, units already closed may still
        # hold records fetched before it; they must not commit once the partition is positioned again.
        self._serving: dict[TopicPartition, int] = {}
        self._epochs = itertools.count(1)
        self._to_position: set[TopicPartition] = set()  # assigned and producer started
        # Next offsets this worker's own transactions committed: a lower bound on the truth that a
        # committed() answer may lag behind (aiokafka's OffsetFetch has no KIP-447 require_stable).
        self._committed_through: dict[TopicPartition, int] = {}
        # Next offset not yet admitted per partition since it was last positioned: a record fetched
        # twice (the client re-fetching around a broker restart) is admitted once.
        self._next_offset: dict[TopicPartition, int] = {}
        self._generation = 0  # bumped by every assignment change
        self._stats_written_s = time.monotonic()
        self._paused = False
        self._ready = False
        self._stopped = False
        self._draining = False  # stop requested: commit what is fetched, fetch nothing more
        self._abandoned = False  # the drain timed out: nothing more may commit in this process
        self._fatal: BaseException | None = None
        self._failures = 0
        self._results_topic = results_topic(self._region)
        self._audit_topic = audit_topic(self._region)
        self._dlq_topic = dlq_topic(self._region)
        kafka = settings.kafka
        self.consumer = AIOKafkaConsumer(
            **kafka.client_kwargs(),
            group_id=self._group_id,
            client_id=self.node_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            fetch_max_wait_ms=20,
            max_poll_records=settings.fetch_max_records,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=2_000,
            request_timeout_ms=kafka.request_timeout_ms,
        )
        self.sink: Sink
        if settings.delivery == "exactly_once":
            self.sink = TransactionalSink(
                kafka=kafka,
                group_id=self._group_id,
                client_id=self.node_id,
                transaction_timeout_ms=settings.transaction_timeout_ms,
            )
        else:
            self.sink = AckSink(
                kafka=kafka,
                client_id=self.node_id,
                commit=self._commit_offsets,
            )

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the sink and subscribe the consumer to the region's ingest topics; with the registry,
        start reporting on ``control.workers`` what this worker applied."""
        await self.sink.start()
        try:
            topics = [ingest_topic(self._region, kind) for kind in KINDS]
            self.consumer.subscribe(topics, listener=_Rebalance(self))
            await self.consumer.start()
            if self._reporter is not None:
                await self._reporter.start()
        except BaseException:
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
        finally:
            await self.consumer.stop()
            await self.sink.stop()
            if self._reporter is not None:
                await self._reporter.stop()
            self._executor.shutdown(wait=True)
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
        fetch = asyncio.create_task(self._fetch_loop(), name="fetch")
        process = asyncio.create_task(self._process_loop(), name="process")
        stopper = asyncio.create_task(stop.wait(), name="stop")
        tasks = [fetch, process]
        if self.settings.registry:
            tasks.append(asyncio.create_task(self._follow_registry(), name="registry"))
        if self._reporter is not None:
            reporting = self._reporter.run(self.settings.stats_interval_s, self._report_now)
            tasks.append(asyncio.create_task(reporting, name="report"))
        try:
            done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
            self._note_fatal(done - {stopper})
            if self._fatal is None:
                await self._drain(fetch, process)
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

    async def _drain(self, fetch: asyncio.Task[None], process: asyncio.Task[None]) -> None:
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
        self._note_fatal({process})
        log.info("drained %d records in %.2f s", held, time.monotonic() - started_s)

    # -- fetch and admit ---------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        limit = self.settings.max_in_flight
        while True:
            await self._position_new_partitions()
            self._apply_backpressure(limit)
            room = max(1, min(self.settings.fetch_max_records, limit - self._held()))
            fetched = await self.consumer.getmany(timeout_ms=100, max_records=room)
            if time.monotonic() - self._stats_written_s >= self.settings.stats_interval_s:
                self._write_stats()
            # One stat: a rotated key, an enrolment or a forgotten device in the key file applies from
            # here. After the fetch, so a record written after a key file change is never opened with
            # the ring from before it.
            self._keyring = self._keys.current()
            now_s = time.monotonic()
            now_ms = time.time() * 1000.0
            admitted = 0
            for tp, records in fetched.items():
                if tp not in self._serving:
                    continue  # revoked, or waiting to be positioned at its committed offset: read again then
                records = self._unseen(tp, records)
                for record in records:
                    self._admit(tp, record, now_s, now_ms)
                admitted += len(records)
            self.metrics.consumed(admitted)
            self.metrics.set_in_flight(self._held())
            if fetched:
                self._wakeup.set()
            elif self._held() == 0:
                self.readiness.progress()  # idle, not stuck

    async def _position_new_partitions(self) -> None:
        """Seek newly assigned and rewound partitions to their committed offsets, then serve them.

        Only here, between two ``getmany`` calls: a seek made while a fetch is in flight could have
        that fetch return records of either position (aiokafka drops results buffered before a seek,
        but not ones already handed out). Not in the rebalance listener either: ``committed()`` there
        waits for the rebalance that is calling the listener.
        """
        waiting = self._to_position & self.consumer.assignment()
        self._to_position -= self._to_position - waiting  # revoked while waiting
        if not waiting:
            return
        generation = self._generation
        positioned = await self._seek_committed(waiting)
        if generation != self._generation:
            return  # the assignment changed meanwhile: position again from what is assigned now
        self._to_position -= positioned
        for tp in positioned:
            self._serving[tp] = next(self._epochs)

    def _unseen(
        self, tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]
    ) -> list[ConsumerRecord[bytes, bytes]]:
        """The records of ``tp`` not admitted before since it was positioned, in offset order."""
        expected = self._next_offset.get(tp, 0)
        fresh = [r for r in records if r.offset >= expected]
        if len(fresh) < len(records):
            self.stats.refetched += len(records) - len(fresh)
            log.warning(
                "%s[%d]: %d records fetched again (from offset %d; next new one is %d); admitted once",
                tp.topic,
                tp.partition,
                len(records) - len(fresh),
                records[0].offset,
                expected,
            )
        if fresh:
            self._next_offset[tp] = fresh[-1].offset + 1
        return fresh

    def _fail(self, err: BaseException) -> None:
        log.error("fatal: %r", err)
        self.readiness.fail(repr(err))
        if self._fatal is None:
            self._fatal = err
        self._wakeup.set()

    def _held(self) -> int:
        return len(self._open) + self._processing

    def _apply_backpressure(self, limit: int) -> None:
        held = self._held()
        if held >= limit and not self._paused:
            self._paused = True
            self.stats.pauses += 1
            self.metrics.set_paused(True)
            log.info("pausing partitions: %d records held (limit %d)", held, limit)
        elif self._paused and held <= limit // 2:
            self.consumer.resume(*self.consumer.assignment())
            self._paused = False
            self.metrics.set_paused(False)
            log.info("resumed partitions: %d records held", held)
        if self._paused:  # partitions assigned since the pause start unpaused
            self.consumer.pause(*self.consumer.assignment())

    def _admit(
        self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes], now_s: float, now_ms: float
    ) -> None:
        self.stats.consumed += 1
        raw = record.value if record.value is not None else b""
        item = Item(
            tp,
            self._serving[tp],
            record.offset,
            record.timestamp,
            record.key,
            tuple(record.headers),
            raw,
            now_s,
        )
        deadline_s = now_s
        try:
            item.envelope = decode_envelope(raw, max_envelope_bytes=self.settings.max_envelope_bytes)
            item.model = self._catalog.resolve(item.envelope)
            device_key = self._keyring.device_key(
                self._region, item.envelope.device_id, item.envelope.key_id, now_ms
            )
            body = open_envelope(item.envelope, device_key, max_body_bytes=self.settings.max_body_bytes)
            item.model.artifact.spec.check_input(body.dtype, tuple(body.shape))
            item.tensor = decode_tensor(body)
            budget_s = (item.envelope.capture_time_ms + self.settings.sla_ms - now_ms) / 1000.0
            deadline_s = now_s + budget_s
        except ContractError as err:
            item.error = err
        self._open.add(UNIT, item, now_s=now_s, deadline_s=deadline_s if item.error is None else now_s + 1.0)

    def _routing_key(self) -> bytes:
        if self.settings.routing_key is not None:
            return self.settings.routing_key.get_secret_value().encode()
        master = self._keyring.keys(self._region)[self._keyring.current_key_id(self._region)].master
        assert master is not None, "the current key is never retired"
        return routing_key(master)

    def _registry_loader(self) -> Loader | None:
        """How a registry version is verified and loaded, when the worker follows the registry."""
        if not self.settings.registry:
            return None
        root = self.settings.registry_home or self.settings.home / "registry"
        store = LocalArtifactStore(root / "artifacts")
        trusted = TrustedKeys.load(root / "trusted-keys.json")
        cache = root / "cache"

        def load(signed: SignedManifest) -> ServedModel:
            return open_model(verified_artifact(store, signed, trusted, cache), self.settings)

        return load

    async def _follow_registry(self) -> None:
        """Apply each model's newest registry state as it arrives (forever)."""
        async for state in RegistryClient(self.settings.kafka).follow():
            if state.model in self.settings.models and await self._catalog.apply(state):
                self._write_stats()  # the rollout controller sees the new revision now
                self._report_now.set()
                for name, version in self._catalog.models:
                    served = self._catalog.models[(name, version)]
                    self.metrics.model_info(
                        name, version, served.artifact.sha256, served.session.providers_in_use[0]
                    )

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
                return
            due_s = self._open.next_due_s()
            timeout_s = None if due_s is None else max(0.0, due_s - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout_s)

    async def _process(self, unit: Batch[str, Item]) -> None:
        # A unit popped together with one whose transaction failed may hold records of the partition
        # that was just rewound, even once it is positioned again (the rewind's backoff lets the fetch
        # loop run): they come again from its committed offset, so only the current epoch's stay.
        items = [it for it in unit.items if self._serving.get(it.tp) == it.epoch]
        if not items:
            return
        self._processing = len(items)
        started_s = time.monotonic()
        try:
            self._check_replays_and_rates(items)
            await self._infer_all(items)
            work = self._outputs(items, started_s)
            failed = await self.sink.publish(work)
        except BaseException:
            for tp in {it.tp for it in items}:
                self._replays.abort(tp)
                self._chains.forget(chain_id(tp.topic, tp.partition))  # restarted when positioned again
            raise
        finally:
            self._processing = 0
        for tp, part in work.items():
            chain = chain_id(tp.topic, tp.partition)
            if tp in failed:
                self._replays.abort(tp)  # its records come again: they are not replays
                # The transaction's outcome may be unknown: the chain restarts from the head committed
                # with the offset when the partition is positioned again.
                self._chains.forget(chain)
            else:
                self._replays.commit(tp)
                self._chains.commit(chain)
                self._committed_through[tp] = max(self._committed_through.get(tp, 0), part.next_offset)
        for tp, err in failed.items():
            await self._rewind(tp, err)
        self._count(items, failed, unit.reason)
        unit_s = time.monotonic() - started_s
        self._estimate.observe(UNIT, unit_s)
        self.metrics.unit(committed=not failed, seconds=unit_s)
        if len(failed) < len(work):
            self.readiness.progress()
        if not failed:
            self._failures = 0

    def _check_replays_and_rates(self, items: Sequence[Item]) -> None:
        """After authentication, in offset order: replays and stale captures, then per-device rates.

        The replay guard stages this unit's ids per partition; they become permanent only when the
        partition's transaction commits, so a record redelivered after an abort is not a replay.
        """
        now_ms = int(time.time() * 1000)
        now_s = time.monotonic()
        for item in items:
            env = item.envelope
            if item.error is not None or env is None:
                continue
            try:
                self._replays.check(item.tp, env.request_id, env.capture_time_ms, now_ms)
                self._rate.check(env.device_id, now_s)
            except ContractError as err:
                item.error = err
                item.tensor = None

    async def _infer_all(self, items: Sequence[Item]) -> None:
        groups: dict[ModelKey, list[Item]] = {}
        for item in items:
            if item.error is None and item.model is not None:
                groups.setdefault(item.model.key, []).append(item)
        for group in groups.values():
            served = group[0].model
            assert served is not None
            try:
                await self._infer(served, group)
            except InferenceFailed as err:
                log.warning(
                    "batch of %d for %s failed (%s); retrying one by one", len(group), served.key, err
                )
                for item in group:
                    try:
                        await self._infer(served, [item])
                    except InferenceFailed as single:
                        item.error = single

    async def _infer(self, served: ServedModel, items: Sequence[Item]) -> None:
        inputs = np.stack([it.tensor for it in items if it.tensor is not None])
        loop = asyncio.get_running_loop()
        started_s = time.monotonic()
        labels, probs = await loop.run_in_executor(self._executor, served.session.run, inputs)
        infer_s = time.monotonic() - started_s
        self.stats.infer_s += infer_s
        self.stats.batch_sizes[len(items)] += 1
        self.metrics.inference(served.key[0], len(items), infer_s)
        for item, label, scores in zip(items, labels.tolist(), probs.tolist(), strict=True):
            if item.tensor is not None and self._sampled(item):
                item.features = tuple(float(x) for x in item.tensor.ravel())
            item.tensor = None  # the decrypted input is not needed past this point
            item.answer = Answer(int(label), tuple(float(s) for s in scores), infer_s * 1000.0, len(items))

    def _outputs(self, items: Sequence[Item], started_s: float) -> dict[TopicPartition, PartitionWork]:
        work: dict[TopicPartition, PartitionWork] = {}
        now_ms = time.time() * 1000.0
        for item in items:
            part = work.setdefault(item.tp, PartitionWork())
            part.next_offset = max(part.next_offset, item.offset + 1)
            if item.error is None:
                part.outputs.extend(self._answer(item, started_s, now_ms))
            else:
                part.outputs.extend(self._dead_letter(item, now_ms))
        for tp, part in work.items():
            part.metadata = self._chains.metadata(chain_id(tp.topic, tp.partition))
        if self.settings.cloud:
            self._cloud_outputs(items, work, now_ms)
        return work

    def _sampled(self, item: Item) -> bool:
        """Whether an answered embedding goes to ``cloud.samples``: by its request id, so the choice is
        the same when a failed transaction's records are processed again."""
        env = item.envelope
        if env is None or env.kind != "embedding" or not self.settings.sample_fraction:
            return False
        return (
            int.from_bytes(hashlib.sha256(env.request_id).digest()[:4], "big")
            < self.settings.sample_fraction * 2**32
        )

    def _cloud_outputs(
        self, items: Sequence[Item], work: Mapping[TopicPartition, PartitionWork], now_ms: float
    ) -> None:
        """Per input partition, a partial summary per (model, version) of its records in this unit and
        the samples of its sampled answers: they commit with exactly the records they describe."""
        summaries: dict[tuple[TopicPartition, ModelKey], PartialSummary] = {}
        pseudonym_key: bytes | None = None
        for item in items:
            if item.model is None or item.envelope is None:
                continue  # undecodable or unknown model: no (model, version) to count it under
            name, version = item.model.key
            summary = summaries.get((item.tp, item.model.key))
            if summary is None:
                summary = PartialSummary(self._region, self.node_id, name, version, int(now_ms))
                summaries[(item.tp, item.model.key)] = summary
            if item.error is not None:
                summary.add_dead_letter(item.error.reason)
                continue
            answer = item.answer
            assert answer is not None
            summary.add_result(answer.label, max(answer.scores), now_ms - item.envelope.capture_time_ms)
            if item.features is not None:
                pseudonym_key = pseudonym_key or self._pseudonym_key()
                sample = Sample(
                    request_id=item.envelope.request_id,
                    region=self._region,
                    model=name,
                    model_version=version,
                    at_ms=int(now_ms),
                    device=pseudonym(pseudonym_key, item.envelope.device_id),
                    features=item.features,
                    label=answer.label,
                    scores=answer.scores,
                )
                item.features = None
                work[item.tp].outputs.append(Output(SAMPLES_TOPIC, sample.to_bytes(), sample.device))
        for (tp, _key), summary in summaries.items():
            work[tp].outputs.append(Output(SUMMARIES_TOPIC, summary.to_bytes(), summary.key))

    def _pseudonym_key(self) -> bytes:
        """The key device pseudonyms are made under: derived from the region's current master key (a
        rotation starts new pseudonyms), never the master key itself."""
        master = self._keyring.keys(self._region)[self._keyring.current_key_id(self._region)].master
        assert master is not None, "the current key is never retired"
        return pseudonym_key(master)

    def _answer(self, item: Item, started_s: float, now_ms: float) -> list[Output]:
        env, served, answer = item.envelope, item.model, item.answer
        if env is None or served is None or answer is None:
            raise RuntimeError(f"{item.tp}@{item.offset} reached publishing without an answer")
        name, version = served.key
        total_ms = now_ms - env.capture_time_ms
        result = ResultRecord(
            request_id=env.request_id,
            device_id=env.device_id,
            model=name,
            model_version=version,
            label=answer.label,
            scores=answer.scores,
            queue_ms=(started_s - item.arrived_s) * 1000.0,
            infer_ms=answer.infer_ms,
            total_ms=total_ms,
            batch_size=answer.batch_size,
            node=self.node_id,
            region=self._region,
            produced_at_ms=int(now_ms),
        )
        audit = AuditRecord(
            timestamp_ms=int(now_ms),
            request_id=env.request_id,
            node=self.node_id,
            region=self._region,
            device_id=env.device_id,
            model=name,
            model_version=version,
            outcome="ok",
            reason=None,
            latency_ms=total_ms,
        )
        audit = self._chains.link(chain_id(item.tp.topic, item.tp.partition), audit)
        return [
            Output(self._results_topic, result.to_bytes(), env.device_id.encode()),
            Output(self._audit_topic, audit.to_bytes(), env.request_id),
        ]

    def _dead_letter(self, item: Item, now_ms: float) -> list[Output]:
        err = item.error
        assert err is not None
        env = item.envelope
        log.debug(
            "dead-letter %s[%d]@%d: %s (%s)", item.tp.topic, item.tp.partition, item.offset, err.reason, err
        )
        headers = dead_letter_headers(
            error=err,
            origin_topic=item.tp.topic,
            origin_partition=item.tp.partition,
            origin_offset=item.offset,
            origin_timestamp_ms=item.timestamp_ms,
            group_id=self._group_id,
            worker_id=self.node_id,
            key_id=None if env is None else env.key_id,
            attempt=attempt_of(item.headers),
            now_ms=int(now_ms),
            origin_headers=item.headers,
        )
        outputs = [Output(self._dlq_topic, item.raw, item.key, headers)]
        if env is not None:
            audit = AuditRecord(
                timestamp_ms=int(now_ms),
                request_id=env.request_id,
                node=self.node_id,
                region=self._region,
                device_id=env.device_id,
                model=env.model,
                model_version=env.model_version,
                outcome="dead_letter",
                reason=err.reason,
                latency_ms=now_ms - env.capture_time_ms,
            )
            audit = self._chains.link(chain_id(item.tp.topic, item.tp.partition), audit)
            outputs.append(Output(self._audit_topic, audit.to_bytes(), env.request_id))
        return outputs

    def _count(self, items: Sequence[Item], failed: Mapping[TopicPartition, object], reason: str) -> None:
        committed = [it for it in items if it.tp not in failed]
        self.stats.units += 1
        self.stats.close_reasons[reason] += 1
        now_ms = time.time() * 1000.0
        for item in committed:
            if item.error is None and item.envelope is not None and item.model is not None:
                self.stats.results += 1
                name, version = item.model.key
                self.metrics.result(name, version, (now_ms - item.envelope.capture_time_ms) / 1000.0)
            elif item.error is not None:
                self.stats.dead_letters[item.error.reason] += 1
                self.metrics.dead_letter(item.error.reason)

    # -- failures, rebalance -----------------------------------------------------------------------

    async def _rewind(self, tp: TopicPartition, err: BaseException) -> None:
        """Re-read ``tp`` from its committed offset: nothing of the failed unit was committed.

        The partition leaves service at once (its records still in flight are dropped) and the fetch
        loop positions it again before its next fetch.
        """
        self.stats.rewinds += 1
        self.metrics.rewind()
        self._failures += 1
        self._open.remove(lambda it: it.tp == tp)
        if self._serving.pop(tp, None) is not None:
            self._to_position.add(tp)
        backoff_s = min(self.settings.retry_backoff_max_ms / 1000.0, 0.05 * 2 ** min(self._failures, 10))
        if self._draining:
            log.warning(
                "%s[%d] failed while draining (%r); its next owner re-reads it", tp.topic, tp.partition, err
            )
            return
        log.warning(
            "re-reading %s[%d] from its committed offset after %r; backing off %.2f s",
            tp.topic,
            tp.partition,
            err,
            backoff_s,
        )
        await asyncio.sleep(backoff_s)

    async def _seek_committed(self, tps: set[TopicPartition]) -> set[TopicPartition]:
        """Position each of ``tps`` at its stable committed offset (its beginning when it has none);
        returns the ones positioned. Those whose offsets are not stable yet (a transaction still in
        doubt, the coordinator still loading after a broker restart) wait for the next round.

        The offsets come from OffsetFetch with ``require_stable`` (``workers/edge/offsets.py``): aiokafka's
        ``committed()`` may answer "none" or an older offset right after a broker restart, and reading
        from there would process committed records a second time.
        """
        try:
            committed = await stable_committed(self.consumer, tps, timeout_s=POSITION_TIMEOUT_S)
        except UnstableOffsets as err:
            log.warning("not positioning %d partitions yet: %s", len(tps), err)
            return set()
        for tp, commit in committed.items():
            offset = None if commit is None else commit.offset
            self._start_chain(tp, commit)
            ours = self._committed_through.get(tp)
            if ours is not None and (offset is None or offset < ours):
                # Cannot happen with a stable answer; if it does, our own commit is the truth.
                log.error(
                    "%s[%d]: stable committed offset %s is below the %d this worker committed",
                    tp.topic,
                    tp.partition,
                    offset,
                    ours,
                )
                offset = ours
            if offset is None:
                # seek_to_committed does nothing for a partition without a commit (aiokafka #1003).
                await self.consumer.seek_to_beginning(tp)
                self._next_offset[tp] = 0
            else:
                self.consumer.seek(tp, offset)
                self._next_offset[tp] = offset
        return set(committed)

    def _start_chain(self, tp: TopicPartition, commit: Committed | None) -> None:
        """Continue the partition's audit chain from the head committed with its offset."""
        chain = chain_id(tp.topic, tp.partition)
        offset = 0 if commit is None else commit.offset
        try:
            head = ChainHead.from_metadata(None if commit is None else commit.metadata)
            self._chains.start(chain, head, offset=offset)
        except MalformedChainHead as err:
            # Keep serving; the old segment's end can no longer be checked against a head, and
            # `audit verify` shows the new segment starting here.
            log.error("%s: %s; starting a new audit chain segment", chain, err)
            self._chains.start(chain, None, offset=offset)

    async def _commit_offsets(self, positions: dict[TopicPartition, OffsetAndMetadata]) -> None:
        owned = {tp: pos for tp, pos in positions.items() if tp in self.consumer.assignment()}
        if not owned:
            return
        try:
            await self.consumer.commit(owned)
        except CommitFailedError as err:
            # The group rebalanced under us; the new owner re-reads from the last commit.
            log.warning("commit refused after a rebalance, records will be redelivered: %s", err)

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        if self._stopped or self._fatal is not None:
            return
        async with self._process_lock:  # the unit in flight commits (or fails) first
            self._generation += 1
            for tp in revoked:
                self._serving.pop(tp, None)
            self._to_position -= revoked
            for tp in revoked:
                self._replays.forget(tp)
                self._chains.forget(chain_id(tp.topic, tp.partition))
            self._set_partitions()
            self._open.remove(lambda it: it.tp in revoked)
            await self.sink.revoked(revoked)

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        # Producers first (fencing the partitions' previous owners), then positions: records fetched
        # before both are in place are dropped and read again from the committed offsets.
        await self.sink.assigned(assigned)
        self._generation += 1
        self._to_position |= assigned
        self._set_partitions()
        log.info("assigned %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))
        if self.settings.ready_file is not None and not self._ready:
            self._ready = True
            path = self.settings.ready_file
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(
                json.dumps(
                    {
                        "node": self.node_id,
                        "region": self._region,
                        "pid": os.getpid(),
                        "partitions": len(assigned),
                    }
                )
            )
            tmp.replace(path)

    def _set_partitions(self) -> None:
        n = len(self._serving.keys() | self._to_position)
        self.readiness.partitions_assigned = n
        self.metrics.set_partitions(n)

    def _write_stats(self) -> None:
        if self.settings.stats_file is None:
            return
        self._stats_written_s = time.monotonic()
        path = self.settings.stats_file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "node": self.node_id,
                    "region": self._region,
                    "served_versions": self._catalog.served_versions(),
                    "registry_revisions": {
                        name: self._catalog.revision(name) for name in self._catalog.served_versions()
                    },
                    "registry_refused": self._catalog.refused,
                    **self.stats.as_dict(),
                },
                indent=2,
            )
        )
        tmp.replace(path)  # readers (the rollout controller) never see half a file


async def serve(settings: WorkerSettings, stop: asyncio.Event) -> WorkerStats:
    """Load keys and models, run a worker until ``stop`` is set, return its counters.

    With ``health_port`` set, /livez, /readyz and /metrics answer from before the models load, so an
    orchestrator sees "not ready" rather than nothing while they do.
    """
    readiness = Readiness(stall_after_s=settings.stall_after_s)
    metrics = WorkerMetrics(region=settings.region, node=settings.resolved_node_id())
    async with contextlib.AsyncExitStack() as stack:
        if settings.health_port is not None:
            server = HealthServer(
                live=readiness.live,
                ready=readiness.ready,
                registry=metrics.registry,
                host=settings.health_host,
                port=settings.health_port,
            )
            await stack.enter_async_context(server)
            log.info("health and metrics on http://%s:%d/", settings.health_host, server.port)
        source = KeySource.of(
            settings.key_file, settings.keys_secret, default_file=settings.home / "keys.json"
        )
        keyring = source.watcher(required_regions=[settings.region])
        models = await asyncio.to_thread(load_models, settings)
        worker = EdgeWorker(settings, keyring=keyring, models=models, metrics=metrics, readiness=readiness)
        async with worker:
            await worker.run(stop)
    return worker.stats
