"""The edge worker: one asyncio process per region (one consumer group per region).

The hot path reads top to bottom:

    fetch a batch (getmany) -> open + validate each envelope -> micro-batch by (model, version)
    -> onnxruntime in a thread -> produce results + audit records -> commit offsets once acknowledged

Bad records go to the region's dead-letter topic with a reason code and never stop the partition.
Delivery is at-least-once: an offset is committed only after every output of every record before it
is acknowledged by the broker (``OffsetTracker``). Memory is bounded: the worker pauses its partitions
while ``max_in_flight`` records are held and resumes at half of it.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgestream.pipeline.batching import Batch, MicroBatcher, ServiceTimeEstimate
from edgestream.pipeline.codec import decode_tensor
from edgestream.pipeline.contract import (
    AuditRecord,
    Envelope,
    ResultRecord,
    decode_envelope,
    open_envelope,
)
from edgestream.pipeline.crypto import KeyRing
from edgestream.pipeline.errors import (
    ContractError,
    EdgestreamError,
    InferenceFailed,
    ShapeMismatch,
    UnknownModel,
)
from edgestream.pipeline.inference import InferenceSession
from edgestream.pipeline.models import ModelArtifact, ModelStore
from edgestream.pipeline.offsets import OffsetTracker
from edgestream.pipeline.settings import DEFAULT_HOME, KafkaSettings
from edgestream.topics.catalogue import (
    KINDS,
    audit_topic,
    dlq_topic,
    edge_group,
    ingest_topic,
    results_topic,
)

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

log = logging.getLogger(__name__)

ModelKey = tuple[str, int]
"""(model name, model version): the micro-batching key."""


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
    """Region master keys (JSON, mode 0600); defaults to ``<home>/keys.json``."""
    models: tuple[str, ...] = ("embedding-scorer", "frame-classifier")
    """Model families this worker serves."""
    model_size: Literal["tiny", "medium", "full"] = "medium"
    """Which size of each family to serve."""
    max_batch: int = Field(default=32, ge=1)
    """Largest micro-batch handed to onnxruntime."""
    max_wait_ms: float = Field(default=4.0, ge=0)
    """Longest a record waits for its batch to fill."""
    sla_ms: float = Field(default=50.0, gt=0)
    """End-to-end latency budget from capture time; batches close early to meet it."""
    max_in_flight: int = Field(default=2048, ge=1)
    """Records held (fetched, not yet acknowledged) before the worker pauses its partitions."""
    fetch_max_records: int = Field(default=500, ge=1)
    """Upper bound on records returned by one ``getmany``."""
    max_envelope_bytes: int = Field(default=1 << 20, ge=256)
    """Records larger than this are dead-lettered before parsing."""
    max_body_bytes: int = Field(default=4 << 20, ge=256)
    """Decompressed bodies larger than this are refused (decompression bombs)."""
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    """onnxruntime execution providers, in order of preference."""
    intra_op_threads: int = Field(default=1, ge=1)
    """onnxruntime intra-op threads; 1 leaves the other core to the event loop and the broker."""
    commit_interval_ms: int = Field(default=100, ge=1)
    """How often acknowledged positions are committed."""
    ready_file: Path | None = None
    """Written (JSON) once models are loaded and partitions assigned; removed at exit."""
    stats_file: Path | None = None
    """Written (JSON) at exit with this worker's counters."""

    def resolved_node_id(self) -> str:
        """``node_id`` or ``<region>-<host>-<pid>``."""
        return self.node_id or f"{self.region}-{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class ServedModel:
    """A model loaded for serving."""

    artifact: ModelArtifact
    """What was loaded (name, version, hash, input spec)."""
    session: InferenceSession
    """The onnxruntime session; called from the inference thread only."""

    @property
    def key(self) -> ModelKey:
        """The micro-batching key."""
        return (self.artifact.name, self.artifact.version)


@dataclass(slots=True)
class Item:
    """One admitted record on its way through the worker."""

    tp: TopicPartition
    """Where it came from."""
    offset: int
    """Its offset there."""
    raw: bytes
    """The record exactly as received (still sealed), kept for a dead letter after inference."""
    envelope: Envelope
    """The decoded envelope (fields outside the ciphertext)."""
    tensor: np.ndarray[Any, Any]
    """The decrypted input, in memory only."""
    arrived_s: float
    """Monotonic time the worker admitted it."""


@dataclass(slots=True)
class WorkerStats:
    """Counters a worker reports at exit (and the demo summarises)."""

    consumed: int = 0
    """Records fetched."""
    results: int = 0
    """Results published."""
    batches: int = 0
    """Micro-batches run."""
    dead_letters: Counter[str] = field(default_factory=Counter)
    """Dead letters by reason code."""
    batch_sizes: Counter[int] = field(default_factory=Counter)
    """How many batches of each size ran."""
    close_reasons: Counter[str] = field(default_factory=Counter)
    """Why batches closed: full, max_wait, deadline, drain."""
    pauses: int = 0
    """Times the partitions were paused for backpressure."""
    infer_s: float = 0.0
    """Seconds spent in onnxruntime."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "consumed": self.consumed,
            "results": self.results,
            "batches": self.batches,
            "dead_letters": dict(self.dead_letters),
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
            "close_reasons": dict(self.close_reasons),
            "pauses": self.pauses,
            "infer_s": round(self.infer_s, 4),
        }


def load_models(settings: WorkerSettings) -> dict[str, ServedModel]:
    """Build (or reuse from cache) and load every model the worker serves."""
    store = ModelStore(settings.home / "models")
    served: dict[str, ServedModel] = {}
    for name in settings.models:
        artifact = store.get(name, settings.model_size)
        session = InferenceSession(
            artifact, providers=settings.providers, intra_op_num_threads=settings.intra_op_threads
        )
        served[name] = ServedModel(artifact, session)
        log.info(
            "serving %s v%d (%s) on %s",
            name,
            artifact.version,
            artifact.sha256[:12],
            session.providers_in_use,
        )
    return served


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: EdgeWorker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._worker._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._worker._on_assigned(assigned)


class EdgeWorker:
    """Consumes a region's ingest topics, infers in micro-batches, publishes results and audit."""

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        keyring: KeyRing,
        models: Mapping[str, ServedModel],
    ) -> None:
        self.settings = settings
        self.node_id = settings.resolved_node_id()
        self.stats = WorkerStats()
        self._region = settings.region
        self._keyring = keyring
        self._models = dict(models)
        self._by_key = {m.key: m for m in self._models.values()}
        self._estimate = ServiceTimeEstimate()
        self._batcher: MicroBatcher[ModelKey, Item] = MicroBatcher(
            settings.max_batch, settings.max_wait_ms, self._estimate
        )
        self._tracker: OffsetTracker[TopicPartition] = OffsetTracker()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infer")
        self._wakeup = asyncio.Event()
        self._run_lock = asyncio.Lock()
        self._acks: set[asyncio.Task[None]] = set()
        self._paused = False
        self._ready = False
        self._stopped = False
        self._fatal: BaseException | None = None
        self._results_topic = results_topic(self._region)
        self._audit_topic = audit_topic(self._region)
        self._dlq_topic = dlq_topic(self._region)
        bootstrap = settings.kafka.bootstrap_servers
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=edge_group(self._region),
            client_id=self.node_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            fetch_max_wait_ms=20,
            max_poll_records=settings.fetch_max_records,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=2_000,
            request_timeout_ms=settings.kafka.request_timeout_ms,
        )
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            client_id=self.node_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=0,
            request_timeout_ms=settings.kafka.request_timeout_ms,
        )

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect the producer and subscribe the consumer to the region's ingest topics."""
        await self._producer.start()
        try:
            topics = [ingest_topic(self._region, kind) for kind in KINDS]
            self._consumer.subscribe(topics, listener=_Rebalance(self))
            await self._consumer.start()
        except BaseException:
            await self._producer.stop()
            raise

    async def stop(self) -> None:
        """Finish what is in flight, commit, leave the group. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        try:
            if self._fatal is None:
                await self._flush()
                await self._commit()
        finally:
            await self._consumer.stop()
            await self._producer.stop()
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
        """Run until ``stop`` is set (SIGTERM), then return after the in-flight work is done.

        A fatal error (a produce that failed after the client's retries, a commit the broker refused
        for a reason other than a rebalance) ends the run with that error; offsets past unfinished
        records were never committed, so a restart loses nothing.
        """
        tasks = [
            asyncio.create_task(self._fetch_loop(), name="fetch"),
            asyncio.create_task(self._batch_loop(), name="batch"),
            asyncio.create_task(self._commit_loop(), name="commit"),
        ]
        stopper = asyncio.create_task(stop.wait(), name="stop")
        try:
            done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopper and task.exception() is not None:
                    self._fatal = task.exception()
        finally:
            for task in [*tasks, stopper]:
                task.cancel()
            await asyncio.gather(*tasks, stopper, return_exceptions=True)
        if self._fatal is not None:
            raise self._fatal

    # -- fetch and admit ---------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        limit = self.settings.max_in_flight
        while True:
            self._apply_backpressure(limit)
            room = max(1, min(self.settings.fetch_max_records, limit - self._tracker.in_flight))
            fetched = await self._consumer.getmany(timeout_ms=100, max_records=room)
            now_s = time.monotonic()
            now_ms = time.time() * 1000.0
            for tp, records in fetched.items():
                for record in records:
                    self._admit(tp, record, now_s, now_ms)
            if fetched:
                self._wakeup.set()
            if self._fatal is not None:
                raise self._fatal

    def _apply_backpressure(self, limit: int) -> None:
        in_flight = self._tracker.in_flight
        if in_flight >= limit and not self._paused:
            self._consumer.pause(*self._consumer.assignment())
            self._paused = True
            self.stats.pauses += 1
            log.info("paused partitions: %d records in flight (limit %d)", in_flight, limit)
        elif self._paused and in_flight <= limit // 2:
            self._consumer.resume(*self._consumer.assignment())
            self._paused = False
            log.info("resumed partitions: %d records in flight", in_flight)
        elif self._paused:
            # Partitions assigned since the pause start unpaused; keep them paused too.
            self._consumer.pause(*self._consumer.assignment())

    def _admit(
        self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes], now_s: float, now_ms: float
    ) -> None:
        self._tracker.track(tp, record.offset)
        self.stats.consumed += 1
        raw = record.value if record.value is not None else b""
        try:
            envelope = decode_envelope(raw, max_envelope_bytes=self.settings.max_envelope_bytes)
            served = self._resolve_model(envelope)
            device_key = self._keyring.device_key(self._region, envelope.device_id, envelope.key_id)
            body = open_envelope(envelope, device_key, max_body_bytes=self.settings.max_body_bytes)
            served.artifact.spec.check_input(body.dtype, tuple(body.shape))
            tensor = decode_tensor(body)
        except ContractError as err:
            self._dead_letter(tp, record.offset, record.key, raw, err, envelope=None)
            return
        budget_s = (envelope.capture_time_ms + self.settings.sla_ms - now_ms) / 1000.0
        item = Item(tp, record.offset, raw, envelope, tensor, now_s)
        self._batcher.add(served.key, item, now_s=now_s, deadline_s=now_s + budget_s)

    def _resolve_model(self, envelope: Envelope) -> ServedModel:
        served = self._models.get(envelope.model)
        if served is None:
            raise UnknownModel(envelope.model, envelope.model_version)
        if envelope.model_version is not None and envelope.model_version != served.artifact.version:
            raise UnknownModel(envelope.model, envelope.model_version)
        if envelope.kind != served.artifact.spec.kind:
            raise ShapeMismatch(
                f"a {envelope.kind} envelope for {envelope.model}, which takes {served.artifact.spec.kind}"
            )
        return served

    # -- batch, infer, produce ---------------------------------------------------------------------

    async def _batch_loop(self) -> None:
        while True:
            self._wakeup.clear()
            async with self._run_lock:
                for batch in self._batcher.pop_ready(time.monotonic()):
                    await self._run_batch(batch)
            due_s = self._batcher.next_due_s()
            timeout_s = None if due_s is None else max(0.0, due_s - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout_s)

    async def _run_batch(self, batch: Batch[ModelKey, Item]) -> None:
        served = self._by_key[batch.key]
        items = batch.items
        started_s = time.monotonic()
        try:
            labels, probs = await self._infer(served, items)
        except InferenceFailed as err:
            log.warning("batch of %d for %s failed (%s); retrying one by one", len(items), batch.key, err)
            await self._run_singly(served, items)
            return
        infer_s = time.monotonic() - started_s
        self.stats.batches += 1
        self.stats.infer_s += infer_s
        self.stats.batch_sizes[len(items)] += 1
        self.stats.close_reasons[batch.reason] += 1
        await self._publish(served, items, labels, probs, started_s, infer_s)
        self._estimate.observe(batch.key, time.monotonic() - started_s)

    async def _infer(
        self, served: ServedModel, items: Sequence[Item]
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        inputs = np.stack([it.tensor for it in items])
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, served.session.run, inputs)

    async def _run_singly(self, served: ServedModel, items: Sequence[Item]) -> None:
        for item in items:
            started_s = time.monotonic()
            try:
                labels, probs = await self._infer(served, [item])
            except InferenceFailed as err:
                self._dead_letter(item.tp, item.offset, None, item.raw, err, envelope=item.envelope)
                continue
            await self._publish(served, [item], labels, probs, started_s, time.monotonic() - started_s)

    async def _publish(
        self,
        served: ServedModel,
        items: Sequence[Item],
        labels: np.ndarray[Any, Any],
        probs: np.ndarray[Any, Any],
        started_s: float,
        infer_s: float,
    ) -> None:
        name, version = served.key
        futures: list[asyncio.Future[Any]] = []
        now_ms = time.time() * 1000.0
        for item, label, scores in zip(items, labels.tolist(), probs.tolist(), strict=True):
            env = item.envelope
            total_ms = now_ms - env.capture_time_ms
            result = ResultRecord(
                request_id=env.request_id,
                device_id=env.device_id,
                model=name,
                model_version=version,
                label=int(label),
                scores=tuple(float(s) for s in scores),
                queue_ms=(started_s - item.arrived_s) * 1000.0,
                infer_ms=infer_s * 1000.0,
                total_ms=total_ms,
                batch_size=len(items),
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
            key = env.device_id.encode()
            futures.append(await self._producer.send(self._results_topic, result.to_bytes(), key=key))
            futures.append(await self._producer.send(self._audit_topic, audit.to_bytes(), key=env.request_id))
        self.stats.results += len(items)
        self._finish_when_acked(futures, [(it.tp, it.offset) for it in items])

    def _dead_letter(
        self,
        tp: TopicPartition,
        offset: int,
        key: bytes | None,
        raw: bytes,
        err: EdgestreamError,
        *,
        envelope: Envelope | None,
    ) -> None:
        self.stats.dead_letters[err.reason] += 1
        log.debug("dead-letter %s[%d]@%d: %s (%s)", tp.topic, tp.partition, offset, err.reason, err)
        headers = [
            ("reason", err.reason.encode()),
            ("stage", err.stage.encode()),
            ("error.class", type(err).__name__.encode()),
            ("error.message", str(err)[:500].encode()),
            ("origin.topic", tp.topic.encode()),
            ("origin.partition", str(tp.partition).encode()),
            ("origin.offset", str(offset).encode()),
            ("worker", self.node_id.encode()),
        ]
        if envelope is not None:
            key = key or envelope.device_id.encode()
        future = asyncio.ensure_future(self._producer.send(self._dlq_topic, raw, key=key, headers=headers))
        self._finish_when_acked([future], [(tp, offset)], nested=True)

    def _finish_when_acked(
        self,
        futures: Sequence[asyncio.Future[Any]],
        done: Sequence[tuple[TopicPartition, int]],
        *,
        nested: bool = False,
    ) -> None:
        async def wait() -> None:
            try:
                acked = await asyncio.gather(*futures)
                if nested:  # send() itself returned the delivery future
                    await asyncio.gather(*acked)
            except KafkaError as err:
                log.error("produce failed after the client's retries: %s", err)
                self._fatal = err
                self._wakeup.set()
                return
            for tp, offset in done:
                if tp in self._consumer.assignment():
                    self._tracker.done(tp, offset)

        task = asyncio.create_task(wait())
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)

    # -- commit, rebalance, shutdown ---------------------------------------------------------------

    async def _commit_loop(self) -> None:
        interval_s = self.settings.commit_interval_ms / 1000.0
        while True:
            await asyncio.sleep(interval_s)
            await self._commit()

    async def _commit(self) -> None:
        positions = {
            tp: pos for tp, pos in self._tracker.committable().items() if tp in self._consumer.assignment()
        }
        if not positions:
            return
        try:
            await self._consumer.commit(positions)
        except CommitFailedError as err:
            # The group rebalanced under us; the new owner re-reads from the last commit.
            log.warning("commit refused after a rebalance, records will be redelivered: %s", err)
            return
        self._tracker.mark_committed(positions)

    async def _flush(self) -> None:
        """Run every held batch now and wait until all outputs are acknowledged."""
        async with self._run_lock:
            for batch in self._batcher.drain():
                await self._run_batch(batch)
        while self._acks:
            await asyncio.gather(*list(self._acks))

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        if self._stopped or self._fatal is not None:
            return
        await self._flush()
        await self._commit()
        dropped = self._tracker.forget(revoked)
        if dropped:
            log.warning("%d in-flight records of revoked partitions will be redelivered", dropped)

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
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

    def _write_stats(self) -> None:
        if self.settings.stats_file is None:
            return
        path = self.settings.stats_file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps({"node": self.node_id, "region": self._region, **self.stats.as_dict()}, indent=2)
        )


async def serve(settings: WorkerSettings, stop: asyncio.Event) -> WorkerStats:
    """Load keys and models, run a worker until ``stop`` is set, return its counters."""
    keyring = KeyRing.load(settings.key_file or settings.home / "keys.json")
    models = load_models(settings)
    worker = EdgeWorker(settings, keyring=keyring, models=models)
    async with worker:
        await worker.run(stop)
    return worker.stats
