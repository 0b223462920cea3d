"""The aggregator process: a faust-streaming app over TLS that adds the edge's partial summaries up into
tumbling windows per (region, model, version), joins labels to samples by request id, computes drift
against a reference (a retrained version's own training inputs, signed into its lineage and read from
the registry; else the model kind's training data), and serves the result over HTTP (faust web,
``GET /windows``) and its metrics beside it (``GET /metrics``, ``observe.py``).

State lives in faust tables (in memory, each backed by a changelog topic, replayed on start), so a
restart resumes where the last committed changelog left off. Processing is at-least-once and every
table value carries the offsets it applied (``windows.seen``): what a restart redelivers is skipped, so
counts are exact. Windows are by the records' ``at_ms`` (event time), not arrival time.

Topics faust makes itself (``<app id>-...``): the tables' changelogs, ``<app id>-samples-by-rid`` (the
samples re-keyed by request id, co-partitioned with ``cloud.labels``) and faust's assignor topic; the
aggregator principal may create, read and write topics prefixed with the app id (``topics.acls``).

One aggregator instance serves the whole view: tables are partitioned, so with several instances each
serves the windows of its own partitions (the view would need a fan-out; not done).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, cast

import faust
from mode.utils.objects import cached_property
from mode.utils.queues import FlowControlEvent
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgestream.pipeline import kafkarecords, kafkawire
from edgestream.pipeline.contract.cloud import Label, PartialSummary, Sample
from edgestream.pipeline.contract.limits import PRODUCER_MAX_REQUEST_BYTES
from edgestream.pipeline.errors import UndecodableRecord
from edgestream.pipeline.learning.calibration import FALSE_POSITIVE_RATE
from edgestream.pipeline.observability.cloud import AggregatorMetrics
from edgestream.pipeline.registry.client import RegistryClient
from edgestream.pipeline.settings import DEFAULT_HOME, KafkaSettings
from edgestream.topics.catalogue import (
    AGGREGATOR_GROUP,
    CLOUD_LABELS,
    LABELS_TOPIC,
    SAMPLES_TOPIC,
    SUMMARIES_TOPIC,
)
from edgestream.workers.aggregator import windows as w
from edgestream.workers.aggregator.devicereports import add_report_agent
from edgestream.workers.aggregator.flow import LiveQueuesFlowControl
from edgestream.workers.aggregator.observe import Rows, add_metrics
from edgestream.workers.aggregator.references import References, kind_reference
from edgestream.workers.aggregator.thresholds import Thresholds
from edgestream.workers.aggregator.view import frozen_summaries, joined_rows

log = logging.getLogger(__name__)

VIEW_PATH: Final = "/windows"
"""Where the web view answers."""
PARTITIONS: Final = CLOUD_LABELS.partitions
"""Partitions of every table and of the re-keyed samples: those of the cloud topics (co-partitioning)."""


class AggregatorSettings(BaseSettings):
    """The aggregator's settings: ``EDGESTREAM_AGGREGATOR_*`` (``__`` nests, e.g. ``KAFKA__...``)."""

    model_config = SettingsConfigDict(
        env_prefix="EDGESTREAM_AGGREGATOR_", env_nested_delimiter="__", frozen=True
    )

    kafka: KafkaSettings = KafkaSettings()
    """How the aggregator reaches the brokers (as ``User:aggregator`` in production)."""
    app_id: str = AGGREGATOR_GROUP
    """faust app id: the consumer group and the prefix of its own topics and transactional ids; must
    start with ``edgestream-aggregator`` for the aggregator's ACLs."""
    window_s: float = Field(default=60.0, gt=0)
    """Tumbling window length."""
    retain_s: float = Field(default=3600.0, gt=0)
    """How long a window is kept (and served) after it ends."""
    max_pending: int = Field(default=100_000, gt=0)
    """Most request ids a partition keeps waiting for their sample or label (split over its join
    buckets; the oldest go first)."""
    join_wait_s: float = Field(default=300.0, gt=0)
    """How long after a sample's window ends its label may still join it (and a duplicate of it is
    still recognised): the join keeps each request id that long, so this bounds its state."""
    registry_refresh_s: float = Field(default=10.0, gt=0)
    """How often the registry is read for the versions' own drift references (retrained versions sign
    the counts of their training inputs into their lineage)."""
    drift_false_positive_rate: float = Field(default=FALSE_POSITIVE_RATE, gt=0, lt=1)
    """Share of unshifted windows drift may flag: each window's thresholds are calibrated to it at the
    window's sample count (``pipeline/learning/calibration.py``)."""
    drift_source_rows: int | None = Field(default=None, gt=0)
    """Distinct inputs the devices draw their samples from, where that is a finite set (the demo's
    devices replay the 143 held-out rows); its own sampling noise then widens the thresholds."""
    web_host: str = "127.0.0.1"
    """Address the HTTP view binds."""
    web_port: int = Field(default=6066, gt=0, lt=65536)
    """Port of the HTTP view."""
    producer_linger_s: float = Field(default=0.5, ge=0)
    """How long faust's producer waits to fill a batch. The aggregator is not on the device's path, and
    at faust's default (0) every table update was a produce request of its own: at the demo's 150
    req/s the aggregator alone sent the broker 175 produce requests a second; at 0.05 s still 80 (a
    batch per changelog partition, each ready at its own time), about one in fifteen of all the
    requests the demo's broker served, whose TLS and handling took most of its 0.6 cores. Its changelog
    writes only matter for a restart's recovery, and the repartitioned samples join their labels half a
    second later at most."""
    fetch_min_bytes: int = Field(default=64 * 1024, ge=1)
    """Bytes a fetch of faust's consumer waits for (at most ``fetch_max_wait_ms``) before the broker
    answers it. At aiokafka's 1 every transaction marker of every worker's commit answered it at once:
    ~34 fetches a second in the demo, the dearest fetches its broker served (many partitions each)."""
    fetch_max_wait_ms: int = Field(default=200, ge=1, le=10_000)
    """Longest the broker holds a fetch of faust's consumer that has less than ``fetch_min_bytes``:
    what a summary may wait before the aggregator reads it, and what a restart's table recovery may
    wait at its changelogs' ends (faust's own default is 1,500)."""
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    """faust's guarantee; counts are exact with either (offsets are deduplicated in the tables)."""
    topic_replication_factor: int | None = Field(default=None, ge=1)
    """Replicas of the topics faust makes itself (its tables' changelogs, the samples re-keyed by
    request id). None: the cluster's rule (``topics/replication.py``: 1 on one broker, 3 on three or
    more), looked up at start. On a 3-broker cluster the brokers require 2 in-sync replicas for every
    write, so a changelog of one replica (faust's default) refuses every table update."""
    home: Path = DEFAULT_HOME
    """Local state; faust's data directory is ``<home>/aggregator``."""
    session_timeout_s: float = Field(default=10.0, ge=6.0, le=60.0)
    """How long the group waits for a silent member (no heartbeat) before giving its partitions to the
    others, or to a restarted aggregator: a killed aggregator's successor waits this out before it can
    count (faust's default is 60 s). Heartbeats go every third of it, from their own task. The broker
    refuses less than its ``group.min.session.timeout.ms`` (6 s by default). Static membership
    (KIP-345), which would let a restarted process take its partitions back at once, is not used: the
    broker hands a returning static member its previous assignment without a rebalance, and faust
    asserts that assignment's web address is its own (a changed port or host left the consumer's
    group routine dead and the aggregator counting nothing); aiokafka sends no LeaveGroup for a static
    member (a clean stop would make the next start wait the session out); and a second process under
    the same name did not fence the first, whose next commit was refused as an unknown member (aiokafka
    sends no instance id with it) and which joined again."""
    rebalance_timeout_s: float = Field(default=20.0, ge=1.0, le=300.0)
    """How long a rebalance waits for the group's members to join again; a member killed while one was
    under way holds its next start up to this long. faust's revocation (a flush of in-memory tables)
    takes well under it."""
    report_regions: tuple[str, ...] = ()
    """Regions whose device reports (``edge.<region>.reports``) it reads (``devicereports.py``);
    empty: none (until the topics and the aggregator's grant on them exist)."""

    @property
    def window_ms(self) -> int:
        """The window in ms."""
        return int(self.window_s * 1000)


def _read_committed_only(fetch_min_bytes: int = 1, fetch_max_wait_ms: int = 1500) -> None:
    """faust's worker consumer reads read_uncommitted unless the app runs exactly_once; the edge's
    summaries and samples are written in transactions, and an aborted one must count for nothing. So
    its consumers are made read_committed, and their fetches wait for ``fetch_min_bytes`` or
    ``fetch_max_wait_ms`` (``AggregatorSettings``; faust sets neither): set on the consumer before it
    starts, where aiokafka reads them. Idempotent; a later call's fetch settings apply to consumers
    made after it."""
    from faust.transport.drivers import aiokafka as driver

    thread = driver.AIOKafkaConsumerThread
    thread._edgestream_fetch = (fetch_min_bytes, fetch_max_wait_ms)  # type: ignore[attr-defined]
    if getattr(thread, "_edgestream_read_committed", False):
        return
    create = thread._create_worker_consumer

    def read_committed(self: Any, transport: Any) -> Any:
        consumer = create(self, transport)
        consumer._isolation_level = "read_committed"
        consumer._fetch_min_bytes, consumer._fetch_max_wait_ms = thread._edgestream_fetch  # type: ignore[attr-defined]
        return consumer

    thread._create_worker_consumer = read_committed  # type: ignore[method-assign]
    thread._edgestream_read_committed = True  # type: ignore[attr-defined]


class _App(faust.App):
    """faust's app, with flow control that keeps records that arrive while the flow runs
    (``flow.py``)."""

    @cached_property
    def flow_control(self) -> FlowControlEvent:
        return LiveQueuesFlowControl(loop=self.loop)


def _faust_app(settings: AggregatorSettings) -> faust.App:
    """The bare faust app: brokers, credentials, in-memory tables, the web view's address."""
    kafka = settings.kafka
    credentials: Any = None
    if kafka.security_protocol == "SSL":
        credentials = faust.SSLCredentials(kafka.client_kwargs()["ssl_context"])
    datadir = settings.home / "aggregator"
    datadir.mkdir(parents=True, exist_ok=True)
    return _App(
        settings.app_id,
        broker=[f"kafka://{server}" for server in kafka.bootstrap_servers.split(",")],
        broker_credentials=credentials,
        store="memory://",
        topic_replication_factor=settings.topic_replication_factor or 1,
        topic_partitions=PARTITIONS,
        processing_guarantee=settings.processing_guarantee,
        producer_linger=settings.producer_linger_s,
        # What the edge's producers may write (faust's default, 1,000,000, is below it): a sample the
        # worker wrote is forwarded by request id whole (a 1,008,134-byte one was refused, and its
        # agent stopped at it, 2026-12-07).
        producer_max_request_size=PRODUCER_MAX_REQUEST_BYTES,
        web_enabled=True,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        web_host=settings.web_host,
        datadir=str(datadir),
        autodiscover=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        key_serializer="json",  # the tables' keys and values; the topics are raw bytes
        value_serializer="json",
    )


def _raw_topic(app: faust.App, name: str, **options: Any) -> Any:
    """A topic of raw bytes keys and values (the records decode themselves)."""
    return app.topic(
        name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw", **options
    )


@dataclass(frozen=True, slots=True)
class _Tables:
    """The app's faust tables (in memory, each backed by its changelog topic)."""

    windows: Any
    """Window key -> the window's summed partial summaries (``windows.new_window``)."""
    join: Any
    """Join key -> one join bucket of a partition (``windows.new_join``)."""
    quality: Any
    """Quality key -> one window's join counters of a partition (``windows.new_quality``)."""

    @classmethod
    def of(cls, app: faust.App) -> _Tables:
        """Declare the tables on ``app``."""
        return cls(
            app.Table("windows", partitions=PARTITIONS, key_type=str),
            app.Table("join-buckets", partitions=PARTITIONS, key_type=str),
            app.Table("quality", partitions=PARTITIONS, key_type=str),
        )


def _skipped(message: Any) -> None:
    """Log a record an agent could not apply, and go on: only that record's counts are lost. Raised
    out of the agent, faust logs the agent as crashed at the record (a model named ``team/scorer``
    once did that, ``windows.window_key``), and whether and where it goes on is faust's to decide."""
    log.exception("skipping %s:%d@%d: applying it failed", message.topic, message.partition, message.offset)


def _add_summary_agent(
    app: faust.App, settings: AggregatorSettings, tables: _Tables, metrics: AggregatorMetrics
) -> None:
    """The agent that adds the edge's partial summaries up into their windows and expires old ones."""
    window_table = tables.windows
    window_ms = settings.window_ms
    retain_ms = int(settings.retain_s * 1000)

    def count(summary: PartialSummary, message: Any) -> None:
        start = w.window_start(summary.at_ms, window_ms)
        key = w.window_key(summary.region, summary.model, summary.model_version, start)
        state = window_table.get(key)
        if state is None:
            state = w.new_window(summary.region, summary.model, summary.model_version, start, window_ms)
            metrics.window_opened(summary.region)
        if w.seen(state, message.topic, message.partition, message.offset):
            return
        w.add_summary(state, summary)
        window_table[key] = state
        # Expire from the stream, so each tombstone goes to the partition the window lives in.
        series = key.rpartition("@")[0] + "@"
        before = time.time() * 1000 - retain_ms
        for old in [k for k in window_table if k.startswith(series) and k != key]:
            started = w.window_start_of(old)
            if started is not None and started + window_ms < before:
                del window_table[old]

    @app.agent(_raw_topic(app, SUMMARIES_TOPIC))
    async def count_summaries(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            try:
                count(PartialSummary.from_bytes(event.value), message)
            except UndecodableRecord as e:
                log.warning("skipping %s:%d@%d: %s", message.topic, message.partition, message.offset, e)
            except Exception:  # one record's failure, whatever it is, stays that record's (_skipped)
                _skipped(message)

    del count_summaries


class _Join:
    """Samples and labels joined by request id, in the join-bucket and quality tables."""

    def __init__(self, settings: AggregatorSettings, tables: _Tables) -> None:
        self._tables = tables
        self._window_ms = settings.window_ms
        self._retain_ms = int(settings.retain_s * 1000)
        self._max_bucket = max(1, settings.max_pending // w.JOIN_BUCKETS)
        self._join_wait_ms = int(settings.join_wait_s * 1000)
        self._expired_at: dict[int, float] = {}
        """Partition -> when its old quality windows were last expired (unix seconds)."""

    def apply(self, event: Any, request_id: bytes, apply: Any, n_bins: list[int]) -> None:
        """Apply one sample or label event to its join bucket (unless seen), then the quality update it
        implies to its window (unless that has seen the event): see ``windows``."""
        message = event.message
        partition, offset = message.partition, message.offset
        key = w.join_key(partition, request_id)
        state = self._tables.join.get(key) or w.new_join()
        fresh = not w.seen(state, message.topic, partition, offset)
        update = apply(state, offset, fresh)
        now_ms = time.time() * 1000
        if fresh:
            w.expire_join(state, int(now_ms), self._join_wait_ms)
            w.bound_pending(state, self._max_bucket)
            self._tables.join[key] = state
        if update is not None:
            qkey = w.quality_key(partition, update.window)
            quality = self._tables.quality.get(qkey) or w.new_quality()
            if not w.seen(quality, message.topic, partition, offset):
                w.add_quality(quality, update, n_bins)
                self._tables.quality[qkey] = quality
        self._expire_quality(partition, now_ms)

    def _expire_quality(self, partition: int, now_ms: float) -> None:
        """Expire old quality windows of ``partition``, from its own stream (tombstones land where the
        keys live), at most every 10 s."""
        if now_ms / 1000 - self._expired_at.get(partition, 0.0) <= 10.0:
            return
        self._expired_at[partition] = now_ms / 1000
        prefix = f"{partition}|"
        table = self._tables.quality
        for old in [k for k in table if k.startswith(prefix)]:
            started = w.window_start_of(w.parse_quality_key(old)[1])
            if started is not None and started + self._window_ms < now_ms - self._retain_ms:
                del table[old]


def _add_join_agents(app: faust.App, settings: AggregatorSettings, join: _Join) -> None:
    """The agents that re-key the samples by request id and join them and the labels."""
    window_ms = settings.window_ms
    by_rid = _raw_topic(app, f"{settings.app_id}-samples-by-rid", partitions=PARTITIONS, internal=True)

    @app.agent(_raw_topic(app, SAMPLES_TOPIC))
    async def rekey_samples(stream: Any) -> None:
        async for event in stream.events():
            try:
                sample = Sample.from_bytes(event.value)
            except UndecodableRecord as e:
                log.warning("skipping a sample: %s", e)
                continue
            try:
                await by_rid.send(key=sample.request_id, value=event.value)
            except Exception:  # refused (its size, say): that sample is not joined, the agent goes on
                _skipped(event.message)

    def join_sample(event: Any) -> None:
        sample = Sample.from_bytes(event.value)
        reference = kind_reference(sample.model)
        bins = None
        n_bins: list[int] = []
        if reference is not None and len(sample.features) == reference.n_features:
            bins = reference.bins_of(sample.features)
            n_bins = [len(c) for c in reference.counts]
        join.apply(
            event,
            sample.request_id,
            lambda state, offset, fresh, s=sample, b=bins: w.add_sample(
                state, s, offset, window_ms, fresh=fresh, bins=b
            ),
            n_bins,
        )

    @app.agent(by_rid)
    async def join_samples(stream: Any) -> None:
        async for event in stream.events():
            try:
                join_sample(event)
            except Exception:  # one record's failure, whatever it is, stays that record's (_skipped)
                _skipped(event.message)

    @app.agent(_raw_topic(app, LABELS_TOPIC))
    async def join_labels(stream: Any) -> None:
        async for event in stream.events():
            try:
                label = Label.from_bytes(event.value)
            except UndecodableRecord as e:
                log.warning("skipping a label: %s", e)
                continue
            try:
                join.apply(
                    event,
                    label.request_id,
                    lambda state, offset, fresh, lb=label: w.add_label(state, lb, offset, fresh=fresh),
                    [],
                )
            except Exception:  # one record's failure, whatever it is, stays that record's (_skipped)
                _skipped(event.message)

    del rekey_samples, join_samples, join_labels


def _add_view(app: faust.App, settings: AggregatorSettings, tables: _Tables) -> Rows:
    """The web view, and the timer that keeps the versions' own drift references fresh for it; returns
    what computes the view's rows for the flag-count timer (awaiting, off the event loop, the drift
    thresholds they need). The view asks for no threshold: a window whose thresholds at its current
    sample count are not simulated shows its drift as the timer last judged it (``samples`` says at how
    many), or pending before its first judgement."""
    references = References()
    thresholds = Thresholds()
    rate, source_rows = settings.drift_false_positive_rate, settings.drift_source_rows

    judged: dict[str, dict[str, Any]] = {}
    """Window key -> its drift as the flag-count timer last judged it."""

    async def rows(peek: bool = False) -> list[dict[str, Any]]:
        windows = frozen_summaries(tables.windows.items())
        joined = w.sum_quality(list(tables.quality.items()))
        by_version = references.by_version

        def compute() -> list[dict[str, Any]]:
            return joined_rows(
                windows,
                joined,
                by_version,
                false_positive_rate=rate,
                source_rows=source_rows,
                thresholds=thresholds,
            )

        if not peek:  # the flag-count timer: waits for the thresholds
            out = await thresholds.judged(compute)
            judged.clear()
            judged.update((row["key"], row["drift"]) for row in out)
            return out
        out = thresholds.peek(compute)
        for row in out:
            if row["drift"]["pending"] and row["key"] in judged:
                row["drift"] = judged[row["key"]]  # as judged at its own sample count
        return out

    @app.task  # type: ignore[untyped-decorator]
    async def warm_references() -> None:
        """Load the zoo's training references at start, off the loop: the first sample loaded its
        dataset inside the loop (~3 s of CPU a demo's agents waited out)."""
        from edgestream.pipeline.models.zoo import FAMILIES

        loop = asyncio.get_running_loop()
        for model in FAMILIES:
            await loop.run_in_executor(None, kind_reference, model)

    # One consumer kept between refreshes, each reading on from where the last ended: a fresh one read
    # control.models from its start every refresh (22 MB in one demo, each state then ~270 KiB).
    registry = RegistryClient(settings.kafka, kept=True)

    @app.timer(interval=settings.registry_refresh_s)  # type: ignore[untyped-decorator]
    async def refresh_references() -> None:
        """Each version's own drift reference, from the registry (read-only, best effort)."""
        try:
            # Not strict: one model's record that does not parse leaves only that model out.
            references.update(await registry.read_states(strict=False))
        except Exception as e:  # a view refinement: the training reference stays in use meanwhile
            log.warning("could not read the registry for drift references: %s", e)

    async def close_registry(sender: Any, *args: Any, **kwargs: Any) -> None:
        """Stop the kept consumer as the app stops (faust sends ``on_before_shutdown``)."""
        del sender, args, kwargs
        await registry.close()

    app.on_before_shutdown.connect(cast("Any", close_registry))  # mode's signal types want a plain def

    @app.page(VIEW_PATH)
    async def view(web: Any, request: Any) -> Any:
        del request
        return web.json(
            {"window_s": settings.window_s, "false_positive_rate": rate, "windows": await rows(peek=True)}
        )

    del warm_references, refresh_references, close_registry, view
    return rows


def build_app(settings: AggregatorSettings, metrics: AggregatorMetrics | None = None) -> faust.App:
    """The faust app: agents, tables, the web view and ``/metrics`` (``observe.py``), not started."""
    _read_committed_only(settings.fetch_min_bytes, settings.fetch_max_wait_ms)
    kafkarecords.install()  # faust's consumer is aiokafka's: header keys as Kafka's Java client reads them
    kafkawire.install()  # and its requests and responses go through the compiled struct codec
    app = _faust_app(settings)
    tables = _Tables.of(app)
    metrics = metrics or AggregatorMetrics()
    _add_summary_agent(app, settings, tables, metrics)
    _add_join_agents(app, settings, _Join(settings, tables))
    add_metrics(app, metrics, _add_view(app, settings, tables))
    if settings.report_regions:
        add_report_agent(app, list(settings.report_regions), settings.home / "aggregator", PARTITIONS)
    return app


def with_replication(settings: AggregatorSettings) -> AggregatorSettings:
    """``settings`` with ``topic_replication_factor`` decided: the cluster's rule when it is None."""
    if settings.topic_replication_factor is not None:
        return settings
    from edgestream.topics.admin import cluster_replication_factor

    replicas = asyncio.run(cluster_replication_factor(settings.kafka))
    return settings.model_copy(update={"topic_replication_factor": replicas})


def run(settings: AggregatorSettings) -> None:
    """Run the aggregator until SIGTERM/SIGINT (faust's worker installs the handlers), its own topics
    replicated as the cluster's rule says (``with_replication``)."""
    quiet_worker(build_app(with_replication(settings))).execute_from_commandline()


def quiet_worker(app: faust.App) -> faust.Worker:
    """The faust worker that runs ``app``, logging at WARNING. Without its terminal spinner: faust hooks
    the spinner to the root logger at DEBUG, so every debug line of aiokafka and faust (several per
    fetch and per send) became a log record that no handler printed, 9% of the aggregator's CPU in a
    profiled demo."""
    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    worker.spinner = None
    return worker
