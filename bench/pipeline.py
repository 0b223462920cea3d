"""``make bench``: the pipeline's speed beside two floors, measured side by side in one run.

One throwaway home (broker data, keys, models) and one local Kafka broker for the whole run. At each
offered load two targets run in turn, each against a fresh process on the far side of Kafka, each
after a short warm-up that is discarded:

* **pipeline**: an edge worker (``python -m edgestream worker``, one intra-op thread) serving region
  ``bench``, and the device fleet in this process; latency is capture -> result received.
* **echo floor**: the same fleet sending the same sealed envelopes to region ``bench-echo``, where
  ``python -m bench.pipeline echo`` republishes every record unchanged to the results topic with the
  worker's client settings: produce -> consume -> produce -> consume, i.e. the pipeline minus open,
  validate, batch, infer and audit. Its consumer also records the one-hop time (the producer's record
  timestamp -> consumed), the raw Kafka round trip.

Then bare onnxruntime (``InferenceSession.run``, one intra-op thread) on the same models at the batch
sizes the workers ran. Writes ``bench/results/pipeline.json`` and ``pipeline.png``; times are
reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiokafka
import numpy as np
import onnxruntime
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgestream.pipeline.contract.envelope import ResultRecord, decode_envelope
from edgestream.pipeline.errors import EdgestreamError
from edgestream.pipeline.models import ModelStore, load_dataset
from edgestream.pipeline.security.keyfile import KeyRing
from edgestream.pipeline.serving.inference import InferenceSession
from edgestream.pipeline.settings import KafkaSettings, Region, kafka_settings
from edgestream.topics.acls import apply_policy
from edgestream.topics.admin import ensure_topics
from edgestream.topics.catalogue import (
    KINDS,
    all_topics,
    edge_group,
    ingest_topic,
    parse_topic,
    results_topic,
)
from edgestream.workers.edge.worker import WorkerSettings
from edgestream.workers.local.broker.process import running_broker
from edgestream.workers.local.broker.settings import BrokerSettings
from edgestream.workers.local.fleet import MODEL_FOR_KIND, Fleet, FleetReport, FleetSettings
from edgestream.workers.local.fleet import Progress as FleetProgress

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The checkout: children run from here so ``python -m bench.pipeline`` resolves."""
PIPELINE_REGION = "bench"
"""Region the edge worker serves."""
ECHO_REGION = "bench-echo"
"""Region the echo floor uses: its own ingest and results topics."""
ECHO_GROUP = "edgestream-bench-echo"
"""Consumer group of the echo process."""
FLOOR_BLOCK = 10
"""Runs timed back to back per point and round in the bare onnxruntime floor."""
MAX_ENVELOPE_BYTES = 1 << 20
"""Envelope size limit when the fleet reads its echoed envelopes back (the worker's default)."""

F = TypeVar("F", bound=Fleet)


class BenchError(EdgestreamError):
    """A part of the bench could not be started."""

    reason = "bench"


class BenchSettings(BaseSettings):
    """Settings of ``python -m bench.pipeline`` (``EDGESTREAM_BENCH_*``)."""

    model_config = SettingsConfigDict(
        env_prefix="EDGESTREAM_BENCH_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    loads_per_s: tuple[float, ...] = (100.0, 300.0, 1000.0, 2000.0, 4000.0)
    """Offered loads (requests per second, open loop), each measured for the pipeline and the echo."""
    duration_s: float = Field(default=10.0, gt=0)
    """How long the fleet sends at each measured load."""
    warmup_s: float = Field(default=1.5, ge=0)
    """Discarded warm-up before each measured load, against the same fresh process."""
    warmup_rate_per_s: float = Field(default=200.0, gt=0)
    """Offered load of the warm-up."""
    broker_warmup_s: float = Field(default=5.0, ge=0)
    """Discarded echo traffic right after the broker starts, so its JIT is warm before the first load."""
    broker_warmup_rate_per_s: float = Field(default=500.0, gt=0)
    """Offered load of the broker warm-up."""
    drain_s: float = Field(default=3.0, ge=0)
    """After sending stops, how long the fleet keeps listening for outstanding answers."""
    deadline_ms: float = Field(default=2000.0, gt=0)
    """Device deadline; generous, so fallbacks do not hide the pipeline's latency."""
    frame_fraction: float = Field(default=0.5, ge=0, le=1)
    """Share of frames (the rest are embeddings)."""
    devices: int = Field(default=60, ge=1)
    """Simulated devices (Kafka keys) at least; more at high loads (``max_device_rate_per_s``)."""
    max_device_rate_per_s: float = Field(default=20.0, gt=0)
    """Most requests per second one device sends: a load needs ``rate / this`` devices, which keeps
    every device well under the worker's per-device rate limit."""
    model_size: Literal["tiny", "medium", "full"] = "medium"
    """Model size the worker serves and bare onnxruntime runs."""
    max_batch: int | None = Field(default=None, ge=1)
    """Worker's largest batch; None keeps the worker's own default."""
    max_wait_ms: float | None = Field(default=None, ge=0)
    """Worker's longest wait for a batch to fill; None keeps the worker's own default."""
    echo_delivery: Literal["match_worker", "at_least_once", "exactly_once"] = "match_worker"
    """How the echo makes its output durable: like the worker (its ``delivery`` setting where it has
    one, else at-least-once), acknowledged then committed, or in a transaction per input partition."""
    intra_op_threads: int = Field(default=1, ge=1)
    """onnxruntime intra-op threads, in the worker and in the bare floor."""
    floor_batch_sizes: tuple[int, ...] = (1, 4, 16, 32)
    """Batch sizes always timed for bare onnxruntime, beside every size the workers ran."""
    floor_min_repeats: int = Field(default=50, ge=1)
    """Fewest timed runs per (model, batch size)."""
    floor_budget_s: float = Field(default=0.08, gt=0)
    """Timing budget per (model, batch size); the runs go on until it and the fewest runs are done."""
    catch_up_timeout_s: float = Field(default=10.0, gt=0)
    """After a load, how long to wait for the far side to consume its backlog before stopping it (what
    is left is skipped, so the next load starts clean)."""
    ready_timeout_s: float = Field(default=90.0, gt=0)
    """How long a worker or echo process may take to load and get its partitions."""
    sla_ms: float = Field(default=50.0, gt=0)
    """The latency budget drawn on the plot."""
    broker_security: Literal["tls", "plaintext"] = "tls"
    """The bench broker's listener: TLS 1.3 with client certificates and ACLs (as deployed), or
    PLAINTEXT to measure what TLS costs (run both, compare each one's pipeline/echo ratios)."""
    seed: int = 7
    """Fleet seed: every load sends the same devices and inputs in the same order."""
    out_dir: Path = REPO_ROOT / "bench" / "results"
    """Where ``pipeline.json`` and ``pipeline.png`` go."""
    keep_home: bool = False
    """Keep the temporary home (broker and process logs) instead of deleting it."""


# -- the echo process ------------------------------------------------------------------------------


class EchoSettings(BaseSettings):
    """Settings of ``python -m bench.pipeline echo`` (``EDGESTREAM_ECHO_*``)."""

    model_config = SettingsConfigDict(
        env_prefix="EDGESTREAM_ECHO_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    region: str = ECHO_REGION
    """Consumes ``edge.<region>.ingest.*`` and republishes to ``edge.<region>.results``."""
    kafka: KafkaSettings = KafkaSettings()
    """How to reach the brokers."""
    fetch_max_records: int = Field(default=500, ge=1)
    """Upper bound on records returned by one ``getmany`` (the worker's default)."""
    commit_interval_ms: int = Field(default=100, ge=1)
    """At-least-once: how often acknowledged positions are committed (the worker's default)."""
    transactional: bool = False
    """Exactly-once, as the worker does it: rounds of transactions, one per input partition (a
    transactional producer each) holding its echoes and consumed offset; fetching goes on meanwhile."""
    ready_file: Path | None = None
    """Written once partitions are assigned; removed at exit."""
    stats_file: Path | None = None
    """Written (JSON) at exit: counters and one-hop samples."""


class _ReadyOnAssign(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, path: Path | None) -> None:
        self._path = path

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if self._path is None or not assigned:
            return
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "partitions": len(assigned)}))
        tmp.replace(self._path)


class EchoWorker:
    """The Kafka-only floor: consume a batch, republish each record unchanged, make it durable.

    Client settings are the edge worker's (read_committed, fetch_max_wait_ms 20, acks=all, idempotence,
    linger 0; at-least-once: offsets committed every 100 ms once the echoes are acknowledged;
    exactly-once: a transaction per input partition), so what differs from the pipeline is the work
    between the hops.
    """

    def __init__(self, settings: EchoSettings) -> None:
        self.settings = settings
        self._out_topic = results_topic(settings.region)
        self._consumer = AIOKafkaConsumer(
            **settings.kafka.client_kwargs(),
            group_id=ECHO_GROUP,
            client_id="edgestream-bench-echo",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            fetch_max_wait_ms=20,
            max_poll_records=settings.fetch_max_records,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=2_000,
            request_timeout_ms=settings.kafka.request_timeout_ms,
        )
        self._producer = None if settings.transactional else AIOKafkaProducer(**self._producer_config())
        self._tx_producers: dict[TopicPartition, AIOKafkaProducer] = {}
        self._buffer: dict[TopicPartition, list[Any]] = {}
        self._has_work = asyncio.Event()
        self._closing = False
        self._unacked: list[tuple[asyncio.Future[list[Any]], dict[TopicPartition, int]]] = []
        self._acked: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self.echoed = 0
        self.fetch_sizes: Counter[int] = Counter()
        self.one_hop: list[tuple[int, float]] = []
        """(producer timestamp ms, ms from that timestamp to consumed) per record."""

    def _producer_config(self) -> dict[str, Any]:
        return {
            **self.settings.kafka.client_kwargs(),
            "client_id": "edgestream-bench-echo",
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": 0,
            "request_timeout_ms": self.settings.kafka.request_timeout_ms,
        }

    async def run(self, stop: asyncio.Event) -> None:
        """Echo until ``stop`` is set, then make every echo durable and return."""
        if self._producer is not None:
            await self._producer.start()
        try:
            topics = [ingest_topic(self.settings.region, kind) for kind in KINDS]
            self._consumer.subscribe(topics, listener=_ReadyOnAssign(self.settings.ready_file))
            await self._consumer.start()
            try:
                await self._loop(stop)
            finally:
                await self._consumer.stop()
        finally:
            producers = [
                *([self._producer] if self._producer is not None else []),
                *self._tx_producers.values(),
            ]
            await asyncio.gather(*(p.stop() for p in producers), return_exceptions=True)
            self._write_stats()
            if self.settings.ready_file is not None:
                self.settings.ready_file.unlink(missing_ok=True)

    async def _loop(self, stop: asyncio.Event) -> None:
        if self._producer is None:
            await self._loop_in_transactions(stop)
        else:
            await self._loop_acked(stop, self._producer)

    async def _fetch(self) -> dict[TopicPartition, list[Any]]:
        fetched: dict[TopicPartition, list[Any]] = await self._consumer.getmany(
            timeout_ms=100, max_records=self.settings.fetch_max_records
        )
        now_ms = time.time() * 1000.0
        count = 0
        for records in fetched.values():
            count += len(records)
            self.one_hop.extend((r.timestamp, now_ms - r.timestamp) for r in records)
        if count:
            self.echoed += count
            self.fetch_sizes[count] += 1
        return fetched

    async def _loop_acked(self, stop: asyncio.Event, producer: AIOKafkaProducer) -> None:
        """At-least-once: send each fetched batch at once; commit acknowledged positions every 100 ms."""
        committer = asyncio.create_task(self._commit_loop())
        try:
            while not stop.is_set():
                fetched = await self._fetch()
                futures: list[asyncio.Future[Any]] = []
                positions: dict[TopicPartition, int] = {}
                for tp, records in fetched.items():
                    for record in records:
                        futures.append(await self._send(producer, record))
                    positions[tp] = records[-1].offset + 1
                if futures:
                    self._unacked.append((asyncio.gather(*futures), positions))
                if committer.done():
                    committer.result()  # raises what ended it
        finally:
            committer.cancel()
            await asyncio.gather(committer, return_exceptions=True)
        for future, positions in self._unacked:
            await future
            self._acked.update(positions)
        self._unacked.clear()
        await self._commit()

    async def _loop_in_transactions(self, stop: asyncio.Event) -> None:
        """Exactly-once, as the worker: fetching goes on while a round of transactions commits, and the
        next round takes everything fetched meanwhile (one transaction per input partition)."""
        publisher = asyncio.create_task(self._publish_loop())
        try:
            while not stop.is_set():
                for tp, records in (await self._fetch()).items():
                    self._buffer.setdefault(tp, []).extend(records)
                    self._has_work.set()
                if publisher.done():
                    publisher.result()  # raises what ended it
        finally:
            self._closing = True
            self._has_work.set()
            await publisher  # publishes what is still buffered, then returns

    async def _publish_loop(self) -> None:
        while True:
            if not self._buffer:
                if self._closing:
                    return
                await self._has_work.wait()
                self._has_work.clear()
                continue
            work, self._buffer = self._buffer, {}
            await asyncio.gather(*(self._echo_in_transaction(tp, records) for tp, records in work.items()))

    async def _send(self, producer: AIOKafkaProducer, record: Any) -> asyncio.Future[Any]:
        headers = list(record.headers) or None
        future: asyncio.Future[Any] = await producer.send(
            self._out_topic, record.value, key=record.key, headers=headers
        )
        return future

    async def _echo_in_transaction(self, tp: TopicPartition, records: Sequence[Any]) -> None:
        producer = self._tx_producers.get(tp)
        if producer is None:
            producer = AIOKafkaProducer(
                **self._producer_config(),
                transactional_id=f"{ECHO_GROUP}-{tp.topic}-{tp.partition}",
                retry_backoff_ms=5,  # as the worker: the next transaction's first request often retries
            )
            await producer.start()
            self._tx_producers[tp] = producer
        await producer.begin_transaction()
        deliveries = [await self._send(producer, record) for record in records]
        await producer.send_offsets_to_transaction({tp: records[-1].offset + 1}, ECHO_GROUP)
        await producer.commit_transaction()
        await asyncio.gather(*deliveries)

    async def _commit_loop(self) -> None:
        interval_s = self.settings.commit_interval_ms / 1000.0
        while True:
            await asyncio.sleep(interval_s)
            await self._commit()

    async def _commit(self) -> None:
        while self._unacked and self._unacked[0][0].done():
            future, positions = self._unacked.pop(0)
            future.result()  # a produce that failed after the client's retries ends the run
            self._acked.update(positions)
        due = {tp: pos for tp, pos in self._acked.items() if self._committed.get(tp) != pos}
        if due:
            await self._consumer.commit(due)
            self._committed.update(due)

    def _write_stats(self) -> None:
        path = self.settings.stats_file
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        stats = {
            "echoed": self.echoed,
            "transactional": self.settings.transactional,
            "fetch_sizes": {str(k): v for k, v in sorted(self.fetch_sizes.items())},
            "one_hop": [[ts, round(ms, 3)] for ts, ms in self.one_hop],
        }
        path.write_text(json.dumps(stats))


def run_echo_process(settings: EchoSettings) -> None:
    """The echo process's main: run until SIGTERM or SIGINT."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await EchoWorker(settings).run(stop)

    asyncio.run(main())


# -- the fleets ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResultTiming:
    """What one on-time pipeline result says about where its time went."""

    model: str
    """Model that answered."""
    batch_size: int
    """Size of the batch it ran in."""
    queue_ms: float
    """Admitted by the worker -> its batch started."""
    infer_ms: float
    """Its batch's run time, as the worker measured it (executor hop included)."""
    to_worker_ms: float
    """Capture -> admitted by the worker: the ingest hop (and the opening of records fetched before it)."""
    to_device_ms: float
    """Result produced -> received by the device: the results hop."""


class _PipelineFleet(Fleet):
    """The fleet, also keeping the worker's per-result timings."""

    def __init__(self, settings: FleetSettings, keyring: KeyRing) -> None:
        super().__init__(settings, keyring)
        self.timings: list[ResultTiming] = []

    def _on_result(self, result: ResultRecord, now_ms: float) -> None:
        pending = self._pending.get(result.request_id)
        super()._on_result(result, now_ms)
        if pending is not None:
            self.timings.append(
                ResultTiming(
                    model=result.model,
                    batch_size=result.batch_size,
                    queue_ms=result.queue_ms,
                    infer_ms=result.infer_ms,
                    to_worker_ms=result.total_ms - result.queue_ms - result.infer_ms,
                    to_device_ms=now_ms - pending.capture_ms - result.total_ms,
                )
            )


class _EchoFleet(Fleet):
    """The fleet, awaiting its own envelopes echoed back instead of results."""

    async def _receive(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            fetched = await consumer.getmany(timeout_ms=100)
            now_ms = time.time() * 1000.0
            for records in fetched.values():
                for record in records:
                    if record.value is not None:
                        envelope = decode_envelope(record.value, max_envelope_bytes=MAX_ENVELOPE_BYTES)
                        self._on_echo(envelope.request_id, now_ms)

    def _on_echo(self, request_id: bytes, now_ms: float) -> None:
        pending = self._pending.pop(request_id, None)
        if pending is None:
            if request_id in self._expired:
                del self._expired[request_id]
                self.report.regions[ECHO_REGION].late += 1
            return
        region = self.report.regions[pending.region]
        region.results += 1
        region.latencies_ms.append(now_ms - pending.capture_ms)
        region.result_times_s.append(now_ms / 1000.0 - self.report.started_at)


# -- results ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Latency:
    """Latency percentiles, ms; None without samples."""

    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> Latency:
        if not samples_ms:
            return cls(None, None, None)
        p50, p95, p99 = (float(v) for v in np.percentile(samples_ms, [50, 95, 99]))
        return cls(p50, p95, p99)


@dataclass(frozen=True, slots=True)
class RunStats:
    """What the fleet saw at one offered load, for either target."""

    offered_per_s: float
    """Requests per second the fleet offered (open loop)."""
    sent: int
    """Requests sent."""
    results: int
    """Answers received before the device deadline."""
    answered_share: float
    """results / sent."""
    fallbacks: int
    """Requests the device answered itself (deadline passed)."""
    late: int
    """Answers that came after the deadline, within the drain."""
    send_s: float
    """Seconds the fleet spent sending (longer than the duration when the fleet itself fell behind)."""
    sent_per_s: float
    """sent / send_s: the load the fleet managed to offer; below offered_per_s, the box ran out of CPU."""
    items_per_s: float
    """results / send_s."""
    latency: Latency
    """End to end, over answered requests."""
    backlog_left: int
    """Records the far side had not consumed when it was stopped (0: it caught up)."""
    catch_up_s: float
    """Seconds waited after the fleet for the far side to consume its backlog."""
    backlog_skipped: int
    """Records left unconsumed when the far side was stopped, skipped so the next load starts clean."""
    saturated: bool
    """answered_share < 0.99 or a backlog was left: this load is past what the target sustains."""
    p99_over_sla: bool
    """p99 above the latency budget."""
    fleet_behind: bool
    """The fleet sent under 98% of the offered load: the box, not only the target, ran out of CPU."""
    cpu: CpuUse
    """CPU seconds while the fleet ran: ours, other processes', stolen."""
    disturbed: bool
    """Other processes used more than 10% of one core meanwhile: read this load's numbers with care."""


@dataclass(frozen=True, slots=True)
class Breakdown:
    """Where a pipeline request's time goes, over on-time results (percentiles of parts do not add up)."""

    to_worker: Latency
    """Capture -> admitted by the worker: the ingest hop."""
    batch_wait: Latency
    """Admitted -> its batch started (``max_wait_ms``, deadline, a busy event loop)."""
    infer: Latency
    """The batch's run as the worker times it: onnxruntime plus the executor thread hand-off."""
    to_device: Latency
    """Result produced -> received by the device: the results hop."""


@dataclass(frozen=True, slots=True)
class PipelineRun:
    """The pipeline at one offered load."""

    run: RunStats
    mean_batch: float | None
    """Mean of the results' batch_size (a request-weighted mean)."""
    batch_histogram: dict[str, int]
    """The worker's batches by size for this load, its warm-up's batches taken out."""
    histogram_exact: bool
    """False when the warm-up was not fully answered, so its batches could not be taken out exactly."""
    by_model: dict[str, dict[str, float]]
    """Per model: share of results and mean batch size."""
    breakdown: Breakdown
    """Where a request's time goes."""
    worker: dict[str, Any]
    """The worker's own counters at exit (warm-up included)."""


@dataclass(frozen=True, slots=True)
class EchoRun:
    """The echo floor at one offered load."""

    run: RunStats
    one_hop: Latency
    """Producer record timestamp (ms resolution) -> consumed by the echo process."""
    echoed: int
    """Records the echo process republished (warm-up included)."""


@dataclass(frozen=True, slots=True)
class FloorPoint:
    """Bare onnxruntime at one batch size."""

    batch: int
    repeats: int
    min_us: float
    median_us: float
    per_item_min_us: float
    per_item_median_us: float


@dataclass(frozen=True, slots=True)
class LevelRatios:
    """The pipeline beside its floors at one offered load."""

    p50_vs_echo: float | None
    p99_vs_echo: float | None
    items_per_s_vs_echo: float | None
    p50_vs_one_hop: float | None
    infer_share_per_item: float | None
    """Bare onnxruntime per item at the observed mean batch (model mix) / pipeline p50."""
    infer_share_batch_run: float | None
    """Bare onnxruntime per batch at the observed mean batch (what a request waits for) / pipeline p50."""


@dataclass(slots=True)
class Level:
    """One offered load, both targets."""

    offered_per_s: float
    pipeline: PipelineRun
    echo: EchoRun
    ratios: LevelRatios | None = None


@dataclass(slots=True)
class BenchContext:
    """What every phase needs."""

    settings: BenchSettings
    home: Path
    bootstrap: KafkaSettings
    """The broker, as ``admin`` over TLS (the bench's workers and echo run as super users; the devices
    as ``device-<region>``, within their ACLs)."""
    tls_root: Path | None
    keyring: KeyRing
    ui: Ui
    broker_pid: int
    run_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.run_dir = self.home / "run"
        self.run_dir.mkdir(parents=True, exist_ok=True)


# -- progress --------------------------------------------------------------------------------------


class Ui:
    """Rich progress: one bar for the whole run, one for the fleet now sending."""

    def __init__(self, console: Console, phases: int) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            console=console,
        )
        self._overall = self.progress.add_task("bench", total=phases)
        self._phase: TaskID | None = None

    def step(self, message: str) -> None:
        self.progress.console.log(message)

    def done_phase(self) -> None:
        self.progress.advance(self._overall)

    def fleet(self, label: str, duration_s: float) -> Callable[[FleetProgress], None]:
        if self._phase is not None:
            self.progress.remove_task(self._phase)
        task = self._phase = self.progress.add_task(label, total=duration_s)

        def update(p: FleetProgress) -> None:
            p99 = "-" if p.p99_ms is None else f"{p.p99_ms:.1f}"
            self.progress.update(
                task,
                completed=min(p.elapsed_s, p.duration_s),
                description=f"{label}: sent {p.sent}, answered {p.answered}, p99 {p99} ms",
            )

        return update

    def end_fleet(self) -> None:
        if self._phase is not None:
            self.progress.remove_task(self._phase)
            self._phase = None


# -- child processes -------------------------------------------------------------------------------


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
        kafka=kafka_settings(ctx.bootstrap),
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


# -- other load on the machine --------------------------------------------------------------------


_CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _busy_ticks() -> tuple[int, int]:
    """(busy CPU ticks of the whole machine, ticks stolen by the hypervisor), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq, steal


def _process_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), 0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat.rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


@dataclass(frozen=True, slots=True)
class CpuUse:
    """CPU seconds over one measured load: ours (this process, the far side, the broker) and the rest."""

    ours_s: float
    """This process, the worker or echo, and the broker."""
    others_s: float
    """Everything else on the machine (other people's runs make the numbers noisy)."""
    steal_s: float
    """Time the hypervisor gave our virtual CPUs to someone else."""


class CpuWatch:
    """Counts CPU time from ``start`` to ``stop`` (Linux /proc; zeros where there is none)."""

    def __init__(self, pids: Sequence[int]) -> None:
        self._pids = list(pids)
        self._start: tuple[int, int, int] = (0, 0, 0)

    def _sample(self) -> tuple[int, int, int]:
        try:
            busy, steal = _busy_ticks()
        except (OSError, ValueError):
            return (0, 0, 0)
        return busy, steal, sum(_process_ticks(pid) for pid in self._pids)

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> CpuUse:
        busy, steal, ours = (b - a for a, b in zip(self._start, self._sample(), strict=True))
        tick_s = 1.0 / _CLOCK_TICKS_PER_S
        return CpuUse(ours_s=ours * tick_s, others_s=max(0, busy - ours) * tick_s, steal_s=steal * tick_s)


# -- one load level --------------------------------------------------------------------------------


def fleet_settings(ctx: BenchContext, region: str, rate_per_s: float, duration_s: float) -> FleetSettings:
    s = ctx.settings
    return FleetSettings(
        devices=max(s.devices, math.ceil(rate_per_s / s.max_device_rate_per_s)),
        rate_per_s=rate_per_s,
        duration_s=duration_s,
        frame_fraction=s.frame_fraction,
        bad_fraction=0.0,
        deadline_ms=s.deadline_ms,
        drain_s=s.drain_s,
        regions=(Region(name=region, lat=0.0, lon=0.0),),
        kafka=ctx.bootstrap,
        tls_root=ctx.tls_root,
        enrol=False,  # keep the key file (which the workers watch) unchanged between load levels
        label_fraction=0.0,  # the bench measures the edge; no backend labels
        home=ctx.home,
        seed=s.seed,
    )


async def run_fleet_as(
    ctx: BenchContext, fleet_type: type[F], region: str, rate_per_s: float, duration_s: float, label: str
) -> F:
    fleet = fleet_type(fleet_settings(ctx, region, rate_per_s, duration_s), ctx.keyring)
    await fleet.run(ctx.ui.fleet(label, duration_s))
    ctx.ui.end_fleet()
    return fleet


async def consumer_lag(bootstrap: KafkaSettings, group_id: str, topics: Sequence[str]) -> int:
    """Records in ``topics`` past ``group_id``'s committed offsets."""
    tps = [TopicPartition(t, p) for t in topics for p in range(parse_topic(t).spec.partitions)]
    admin = AIOKafkaAdminClient(**kafka_settings(bootstrap).client_kwargs(), client_id="edgestream-bench")
    await admin.start()
    try:
        for attempt in range(20):
            try:
                committed = await admin.list_consumer_group_offsets(group_id)
                break
            except KafkaError as err:  # e.g. the offsets topic still being created
                if not err.retriable or attempt == 19:
                    raise
                await asyncio.sleep(0.25)
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(
        **kafka_settings(bootstrap).client_kwargs(), group_id=None, client_id="edgestream-bench"
    )
    await consumer.start()
    try:
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    lag = 0
    for tp in tps:
        meta = committed.get(tp)
        lag += max(0, ends[tp] - (meta.offset if meta is not None and meta.offset >= 0 else 0))
    return int(lag)


async def wait_caught_up(ctx: BenchContext, group_id: str, region: str) -> tuple[int, float]:
    """Wait until the far side has consumed and committed everything sent; (backlog left, seconds)."""
    topics = [ingest_topic(region, kind) for kind in KINDS]
    started_s = time.monotonic()
    while True:
        lag = await consumer_lag(ctx.bootstrap, group_id, topics)
        waited_s = time.monotonic() - started_s
        if lag == 0 or waited_s > ctx.settings.catch_up_timeout_s:
            return lag, waited_s
        await asyncio.sleep(0.25)


async def skip_backlog(ctx: BenchContext, group_id: str, region: str) -> int:
    """Commit the end of the ingest topics for a group nobody is in: the next load starts clean.

    Returns how many records were skipped. Run only after the group's process has stopped.
    """
    topics = [ingest_topic(region, kind) for kind in KINDS]
    lag = await consumer_lag(ctx.bootstrap, group_id, topics)
    if lag == 0:
        return 0
    tps = [TopicPartition(t, p) for t in topics for p in range(parse_topic(t).spec.partitions)]
    consumer = AIOKafkaConsumer(
        **kafka_settings(ctx.bootstrap).client_kwargs(),
        group_id=group_id,
        enable_auto_commit=False,
        client_id="edgestream-bench",
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.commit(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()
    return lag


def run_stats(
    rate: float,
    report: FleetReport,
    backlog_left: int,
    catch_up_s: float,
    backlog_skipped: int,
    cpu: CpuUse,
    settings: BenchSettings,
) -> RunStats:
    sla_ms, duration_s = settings.sla_ms, settings.duration_s
    t = report.totals()
    share = t.results / t.sent if t.sent else 0.0
    latency = Latency.of(t.latencies_ms)
    return RunStats(
        offered_per_s=rate,
        sent=t.sent,
        results=t.results,
        answered_share=share,
        fallbacks=t.fallbacks,
        late=t.late,
        send_s=report.send_s,
        sent_per_s=t.sent / report.send_s if report.send_s else 0.0,
        items_per_s=t.results / report.send_s if report.send_s else 0.0,
        latency=latency,
        backlog_left=backlog_left,
        catch_up_s=catch_up_s,
        backlog_skipped=backlog_skipped,
        saturated=share < 0.99 or backlog_left > 0,
        p99_over_sla=latency.p99_ms is None or latency.p99_ms > sla_ms,
        fleet_behind=t.sent < 0.98 * rate * report.send_s or report.send_s > 1.02 * duration_s,
        cpu=cpu,
        disturbed=cpu.others_s > 0.1 * report.total_s,
    )


def batches_from_results(batch_sizes: Iterable[int]) -> tuple[Counter[int], bool]:
    """Batches by size as the results tell them (a batch of k gives k results); exact when all came."""
    per_result = Counter(batch_sizes)
    exact = all(count % size == 0 for size, count in per_result.items())
    return Counter({size: count // size for size, count in per_result.items()}), exact


async def measure_pipeline(ctx: BenchContext, rate: float) -> PipelineRun:
    s = ctx.settings
    name = f"worker-{rate:g}"
    command = [sys.executable, "-m", "edgestream", "worker"]
    env = worker_env(ctx, name, worker_settings(ctx, name))
    async with child_process(ctx, name, command, env) as child:
        warm = await run_fleet_as(
            ctx, _PipelineFleet, PIPELINE_REGION, s.warmup_rate_per_s, s.warmup_s, "pipeline warm-up"
        )
        watch = CpuWatch([os.getpid(), child.proc.pid, ctx.broker_pid])
        watch.start()
        fleet = await run_fleet_as(
            ctx, _PipelineFleet, PIPELINE_REGION, rate, s.duration_s, f"pipeline @ {rate:g}/s"
        )
        cpu = watch.stop()
        backlog, waited_s = await wait_caught_up(ctx, edge_group(PIPELINE_REGION), PIPELINE_REGION)
    skipped = await skip_backlog(ctx, edge_group(PIPELINE_REGION), PIPELINE_REGION)
    worker = child.stats()
    warm_totals = warm.report.totals()
    warm_batches, warm_exact = batches_from_results(warm_totals.batch_sizes)
    warm_exact = warm_exact and warm_totals.results == warm_totals.sent
    histogram = Counter({int(k): int(v) for k, v in worker.get("batch_sizes", {}).items()})
    histogram.subtract(warm_batches)
    exact = warm_exact and all(v >= 0 for v in histogram.values())
    totals = fleet.report.totals()
    by_model: dict[str, dict[str, float]] = {}
    for model in sorted({t.model for t in fleet.timings}):
        sizes = [t.batch_size for t in fleet.timings if t.model == model]
        by_model[model] = {"share": len(sizes) / len(fleet.timings), "mean_batch": float(np.mean(sizes))}
    timings = fleet.timings
    return PipelineRun(
        run=run_stats(rate, fleet.report, backlog, waited_s, skipped, cpu, s),
        mean_batch=float(np.mean(totals.batch_sizes)) if totals.batch_sizes else None,
        batch_histogram={str(k): v for k, v in sorted(histogram.items()) if v > 0},
        histogram_exact=exact,
        by_model=by_model,
        breakdown=Breakdown(
            to_worker=Latency.of([t.to_worker_ms for t in timings]),
            batch_wait=Latency.of([t.queue_ms for t in timings]),
            infer=Latency.of([t.infer_ms for t in timings]),
            to_device=Latency.of([t.to_device_ms for t in timings]),
        ),
        worker={k: v for k, v in worker.items() if k not in ("node", "region")},
    )


async def measure_echo(ctx: BenchContext, rate: float) -> EchoRun:
    s = ctx.settings
    name = f"echo-{rate:g}"
    command = [sys.executable, "-m", "bench.pipeline", "echo"]
    async with child_process(ctx, name, command, echo_env(ctx, name)) as child:
        await run_fleet_as(ctx, _EchoFleet, ECHO_REGION, s.warmup_rate_per_s, s.warmup_s, "echo warm-up")
        watch = CpuWatch([os.getpid(), child.proc.pid, ctx.broker_pid])
        watch.start()
        fleet = await run_fleet_as(ctx, _EchoFleet, ECHO_REGION, rate, s.duration_s, f"echo @ {rate:g}/s")
        cpu = watch.stop()
        backlog, waited_s = await wait_caught_up(ctx, ECHO_GROUP, ECHO_REGION)
    skipped = await skip_backlog(ctx, ECHO_GROUP, ECHO_REGION)
    stats = child.stats()
    since_ms = fleet.report.started_at * 1000.0
    one_hop = [float(ms) for ts, ms in stats.get("one_hop", []) if ts >= since_ms]
    return EchoRun(
        run=run_stats(rate, fleet.report, backlog, waited_s, skipped, cpu, s),
        one_hop=Latency.of(one_hop),
        echoed=int(stats.get("echoed", 0)),
    )


# -- bare onnxruntime ------------------------------------------------------------------------------


def onnx_floor(settings: BenchSettings, home: Path, sizes: Sequence[int]) -> dict[str, list[FloorPoint]]:
    """``InferenceSession.run`` per model and batch size: min and median over timed repeats.

    The points are timed round-robin, a short block each per round, so a slow spell of the shared
    machine spreads over every point instead of bending one of them.
    """
    store = ModelStore(home / "models")
    cases: list[tuple[str, int, InferenceSession, np.ndarray[Any, Any]]] = []
    for kind, name in MODEL_FOR_KIND.items():
        session = InferenceSession(
            store.get(name, settings.model_size), intra_op_num_threads=settings.intra_op_threads
        )
        data = load_dataset(kind).X_test
        for size in sizes:
            batch = np.ascontiguousarray(np.resize(data, (size, *data.shape[1:])))
            for _ in range(FLOOR_BLOCK):  # first runs of a shape allocate
                session.run(batch)
            cases.append((name, size, session, batch))
    times_ns: list[list[int]] = [[] for _ in cases]
    budget_end_s = time.monotonic() + settings.floor_budget_s * len(cases)
    while min(len(t) for t in times_ns) < settings.floor_min_repeats or time.monotonic() < budget_end_s:
        for (_, _, session, batch), samples in zip(cases, times_ns, strict=True):
            for _ in range(FLOOR_BLOCK):
                start_ns = time.perf_counter_ns()
                session.run(batch)
                samples.append(time.perf_counter_ns() - start_ns)
    floor: dict[str, list[FloorPoint]] = {}
    for (name, size, _, _), samples in zip(cases, times_ns, strict=True):
        min_us = min(samples) / 1000.0
        median_us = float(statistics.median(samples)) / 1000.0
        point = FloorPoint(size, len(samples), min_us, median_us, min_us / size, median_us / size)
        floor.setdefault(name, []).append(point)
    return floor


def batch_us_at(points: Sequence[FloorPoint], mean_batch: float) -> float:
    """Median per-batch microseconds at a (fractional) batch size, interpolated between measured sizes."""
    xs = [p.batch for p in points]
    ys = [p.median_us for p in points]
    return float(np.interp(mean_batch, xs, ys))


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


# -- facts, JSON, plot, table ----------------------------------------------------------------------


def code_facts() -> dict[str, Any]:
    """The commit this run measured and the pipeline's files that differ from it (where git is)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", "pipeline", "topics", "workers", "edgestream"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "uncommitted": None}
    return {"commit": head, "uncommitted": sorted(line[3:] for line in status.splitlines())}


def foreign_processes() -> dict[str, int]:
    """Kafka brokers and edgestream workers running now (at the start of a run: none of them ours)."""
    counts = {"kafka_brokers": 0, "edgestream_workers": 0}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"kafka.Kafka" in args:
            counts["kafka_brokers"] += 1
        elif b"edgestream" in args and b"worker" in args:
            counts["edgestream_workers"] += 1
    return counts


def machine_facts(kafka_version: str) -> dict[str, Any]:
    cpu_model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / (1 << 20), 1)
    return {
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "memory_gib": mem_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "aiokafka": aiokafka.__version__,
        "numpy": np.__version__,
        "kafka": kafka_version,
        "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
    }


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def caption(document: Mapping[str, Any]) -> str:
    """One line of context for the plot: when, what ran, and which loads were disturbed."""
    worker = document["worker_settings"]
    disturbed = [
        f"{lv['offered_per_s']:g}"
        for lv in document["levels"]
        if lv["pipeline"]["run"]["disturbed"] or lv["echo"]["run"]["disturbed"]
    ]
    return (
        f"{document['timestamp']} · {document['machine']['cores']} cores · worker "
        f"{worker.get('delivery', 'at_least_once')}, max batch {worker['max_batch']} · echo "
        f"{'in transactions' if document['echo_transactional'] else 'acked, then committed'}"
        + (f" · other processes busy during loads {', '.join(disturbed)}/s" if disturbed else "")
    )


def plot(document: Mapping[str, Any], path: Path) -> None:
    """From ``pipeline.json``: latency and throughput vs offered load beside the echo floor, and bare
    onnxruntime per item vs batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    levels: list[dict[str, Any]] = document["levels"]
    sla_ms = float(document["settings"]["sla_ms"])
    offered = [float(lv["offered_per_s"]) for lv in levels]
    fig, (lat, thr, ort) = plt.subplots(1, 3, figsize=(17, 5))

    def series(*keys: str) -> list[float]:
        out = []
        for lv in levels:
            value: Any = lv
            for key in keys:
                value = value[key]
            out.append(np.nan if value is None else float(value))
        return out

    lines = [
        ("pipeline p50", ("pipeline", "run", "latency", "p50_ms"), "tab:blue", "-", "o"),
        ("pipeline p99", ("pipeline", "run", "latency", "p99_ms"), "tab:blue", "--", "s"),
        ("echo floor (2 hops) p50", ("echo", "run", "latency", "p50_ms"), "tab:green", "-", "o"),
        ("echo floor (2 hops) p99", ("echo", "run", "latency", "p99_ms"), "tab:green", "--", "s"),
        ("1 Kafka hop p50", ("echo", "one_hop", "p50_ms"), "tab:gray", ":", "."),
    ]
    shown: list[float] = [sla_ms]
    for label, keys, color, style, marker in lines:
        values = series(*keys)
        shown += [v for v in values if not np.isnan(v)]
        lat.plot(offered, values, marker=marker, color=color, ls=style, label=label)
    for lv in levels:
        for target, color in (("pipeline", "tab:blue"), ("echo", "tab:green")):
            run = lv[target]["run"]
            if run["saturated"] and run["latency"]["p99_ms"] is not None:
                lat.annotate(
                    f"saturated\n{run['answered_share']:.0%} answered",
                    (lv["offered_per_s"], run["latency"]["p99_ms"]),
                    textcoords="offset points",
                    xytext=(0, 8),
                    ha="center",
                    fontsize=7,
                    color=color,
                )
    lat.axhline(sla_ms, color="red", ls="--", lw=1, label=f"{sla_ms:g} ms SLA")
    lat.set_yscale("log")
    lat.set_ylim(min(shown) / 1.5, max(shown) * 3)  # room above for the saturation notes
    lat.set_xscale("log")
    lat.set_xticks(offered, [f"{x:g}" for x in offered])
    lat.xaxis.set_minor_locator(NullLocator())
    lat.set_xlabel("offered load, requests/s (log)")
    lat.set_ylabel("end-to-end latency, ms (log)")
    lat.set_title("Latency: pipeline vs Kafka-only echo")
    lat.legend(fontsize=8, loc="upper left")
    lat.grid(True, which="both", alpha=0.3)

    thr.plot(offered, offered, color="lightgray", ls="--", label="offered")
    for target, color, label in (("pipeline", "tab:blue", "pipeline"), ("echo", "tab:green", "echo floor")):
        thr.plot(offered, series(target, "run", "items_per_s"), marker="o", color=color, label=label)
        thr.plot(
            offered,
            series(target, "run", "sent_per_s"),
            color=color,
            ls=":",
            lw=1,
            label=f"sent ({target} run)",
        )
    top = levels[-1]
    for target, color, dy in (("pipeline", "tab:blue", -16), ("echo", "tab:green", 6)):
        items_per_s = float(top[target]["run"]["items_per_s"])
        thr.annotate(
            f"{items_per_s:.0f}/s",
            (top["offered_per_s"], items_per_s),
            textcoords="offset points",
            xytext=(4, dy),
            ha="left",
            fontsize=8,
            color=color,
        )
    thr.margins(x=0.12)
    thr.set_xlabel("offered load, requests/s")
    thr.set_ylabel("achieved, answered items/s")
    thr.set_title("Throughput")
    thr.legend(fontsize=8)
    thr.grid(True, alpha=0.3)

    floor: dict[str, list[dict[str, Any]]] = document["onnxruntime_floor"]
    for (model, points), color in zip(floor.items(), ("tab:purple", "tab:orange"), strict=False):
        sizes = [p["batch"] for p in points]
        ort.plot(
            sizes, [p["per_item_median_us"] for p in points], marker=".", color=color, label=f"{model} median"
        )
        ort.plot(sizes, [p["per_item_min_us"] for p in points], color=color, ls=":", label=f"{model} min")
    ort.set_xscale("log", base=2)
    ort.set_yscale("log")
    ort.set_xlabel("batch size (log2)")
    ort.set_ylabel("µs per item (log)")
    ort.set_title("Bare onnxruntime, 1 intra-op thread")
    ort.legend(fontsize=8)
    ort.grid(True, which="both", alpha=0.3)

    fig.suptitle(caption(document), fontsize=9, x=0.01, ha="left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _f(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _marks(run: RunStats) -> str:
    return ("*" if run.saturated else "") + ("!" if run.fleet_behind else "") + ("?" if run.disturbed else "")


def summary_table(levels: Sequence[Level]) -> Table:
    table = Table(
        title="pipeline vs echo floor (two Kafka hops), latency ms; "
        "* saturated (answered < 99% or backlog), ! the fleet could not send the offered load, "
        "? other processes used > 10% of a core meanwhile",
        title_justify="left",
    )
    columns = (
        "offered\n/s",
        "pipe\nitems/s",
        "pipe\np50",
        "pipe\np99",
        "mean\nbatch",
        "echo\nitems/s",
        "echo\np50",
        "echo\np99",
        "1-hop\np50",
        "p50\nx echo",
        "p99\nx echo",
        "infer\n% p50",
    )
    for col in columns:
        table.add_column(col, justify="right")
    for lv in levels:
        p, e, r = lv.pipeline.run, lv.echo.run, lv.ratios
        share = None if r is None or r.infer_share_per_item is None else 100 * r.infer_share_per_item
        table.add_row(
            f"{lv.offered_per_s:g}",
            _f(p.items_per_s, ".0f") + _marks(p),
            _f(p.latency.p50_ms),
            _f(p.latency.p99_ms),
            _f(lv.pipeline.mean_batch),
            _f(e.items_per_s, ".0f") + _marks(e),
            _f(e.latency.p50_ms),
            _f(e.latency.p99_ms),
            _f(lv.echo.one_hop.p50_ms),
            _f(r.p50_vs_echo if r else None, ".2f"),
            _f(r.p99_vs_echo if r else None, ".2f"),
            _f(share, ".2f"),
        )
    return table


def breakdown_table(levels: Sequence[Level]) -> Table:
    table = Table(title="where a pipeline request's time goes, ms p50 / p99", title_justify="left")
    for col in ("offered/s", "to worker", "batch wait", "infer (worker)", "to device", "end to end"):
        table.add_column(col, justify="right")

    def cell(lat: Latency) -> str:
        return f"{_f(lat.p50_ms)} / {_f(lat.p99_ms)}"

    for lv in levels:
        b = lv.pipeline.breakdown
        table.add_row(
            f"{lv.offered_per_s:g}",
            cell(b.to_worker),
            cell(b.batch_wait),
            cell(b.infer),
            cell(b.to_device),
            cell(lv.pipeline.run.latency),
        )
    return table


def floor_table(floor: Mapping[str, Sequence[FloorPoint]], shown: Iterable[int]) -> Table:
    table = Table(title="bare onnxruntime (µs)", title_justify="left")
    for col in ("model", "batch", "min/batch", "median/batch", "min/item", "median/item"):
        table.add_column(col, justify="left" if col == "model" else "right")
    wanted = set(shown)
    for model, points in floor.items():
        for p in points:
            if p.batch in wanted:
                table.add_row(
                    model,
                    str(p.batch),
                    _f(p.min_us),
                    _f(p.median_us),
                    _f(p.per_item_min_us, ".2f"),
                    _f(p.per_item_median_us, ".2f"),
                )
    return table


# -- the run ---------------------------------------------------------------------------------------


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
            ctx, _EchoFleet, ECHO_REGION, s.broker_warmup_rate_per_s, s.broker_warmup_s, "broker warm-up"
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
            f"  pipeline: {pipeline.run.items_per_s:.0f} items/s, p50 {_f(pipeline.run.latency.p50_ms)} ms, "
            f"p99 {_f(pipeline.run.latency.p99_ms)} ms, answered {pipeline.run.answered_share:.1%}"
        )
        ctx.ui.step(f"offered load {rate:g}/s: echo floor")
        echo = await measure_echo(ctx, rate)
        ctx.ui.done_phase()
        ctx.ui.step(
            f"  echo: {echo.run.items_per_s:.0f} items/s, p50 {_f(echo.run.latency.p50_ms)} ms, "
            f"p99 {_f(echo.run.latency.p99_ms)} ms, answered {echo.run.answered_share:.1%}"
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
            keyring = KeyRing.create(home / "keys.json", [PIPELINE_REGION, ECHO_REGION])
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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.pipeline [bench|echo]``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.pipeline",
        description="The pipeline's latency and throughput beside a Kafka-only echo and bare onnxruntime.",
        epilog="Settings come from EDGESTREAM_BENCH_* (e.g. EDGESTREAM_BENCH_LOADS_PER_S='[100,300]').",
    )
    parser.add_argument(
        "mode",
        nargs="?",
        choices=("bench", "echo", "plot"),
        default="bench",
        help="bench (default) runs everything; plot redraws pipeline.png from pipeline.json; "
        "echo is the floor's far-side process, started by the bench",
    )
    args = parser.parse_args(argv)
    if args.mode == "echo":
        logging.basicConfig(level=logging.WARNING)
        run_echo_process(EchoSettings())
        return 0
    if args.mode == "plot":
        out_dir = BenchSettings().out_dir
        plot(json.loads((out_dir / "pipeline.json").read_text()), out_dir / "pipeline.png")
        return 0
    console = Console() if sys.stdout.isatty() else Console(width=120)
    logging.basicConfig(level=logging.WARNING, handlers=[RichHandler(console=console)], format="%(message)s")
    settings = BenchSettings()
    # SIGTERM unwinds like Ctrl-C, so the workers, the echo and the broker are stopped on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        result = run_bench(settings, console)
    except KeyboardInterrupt:
        console.print("interrupted: the processes this run started are stopped, nothing was written")
        return 130
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    json_path = settings.out_dir / "pipeline.json"
    png_path = settings.out_dir / "pipeline.png"
    document = result.to_json(settings)
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    plot(document, png_path)
    console.print(summary_table(result.levels))
    console.print(breakdown_table(result.levels))
    console.print(floor_table(result.floor, settings.floor_batch_sizes))
    top = result.levels[-1]
    items_x = top.ratios.items_per_s_vs_echo if top.ratios else None
    console.print(
        f"at {top.offered_per_s:g}/s offered the pipeline answers {_f(items_x, '.2f')}x the echo floor's "
        f"items/s; wall time {result.wall_s:.0f} s; wrote {json_path} and {png_path}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
