"""``edgestream demo``: the whole loop on one machine, then a summary.

Real parts only: a local Kafka broker (started if none is running), the catalogue's topics, one edge
worker process per region, and the simulated fleet in this process. At the end every process this run
started is stopped, and the summary, a JSON copy of it and a latency plot are written.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgestream.pipeline.errors import EdgestreamError
from edgestream.pipeline.learning.drift import MIN_SAMPLES
from edgestream.pipeline.models import ModelStore
from edgestream.pipeline.security import keyfile
from edgestream.pipeline.security.identities import Identity
from edgestream.pipeline.security.pki import Pki
from edgestream.pipeline.settings import DEFAULT_HOME, DEFAULT_REGIONS, Kafka, KafkaSettings, Region
from edgestream.topics.acls import apply_policy
from edgestream.topics.admin import ensure_topics
from edgestream.topics.catalogue import (
    AGGREGATOR_GROUP,
    LABELS_TOPIC,
    SAMPLES_TOPIC,
    SUMMARIES_TOPIC,
    all_topics,
    edge_group,
    region_topics,
)
from edgestream.workers.local.broker import BrokerSettings, LocalBroker, free_port
from edgestream.workers.local.fleet import MODEL_FOR_KIND, FleetReport, FleetSettings, Progress, make_fleet
from edgestream.workers.local.story import (
    STORY_MODEL,
    Story,
    StoryEvent,
    StoryReport,
    StorySettings,
    count_drift,
    prepare_registry,
)
from edgestream.workers.local.story_plot import plot_story

log = logging.getLogger(__name__)


class DemoError(EdgestreamError):
    """A part of the demo could not be started."""

    reason = "demo"


class DemoSettings(BaseSettings):
    """Settings of ``edgestream demo`` (``EDGESTREAM_DEMO_*``)."""

    model_config = SettingsConfigDict(
        env_prefix="EDGESTREAM_DEMO_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    home: Path = DEFAULT_HOME
    """Local state: broker, keys, models, and the demo's logs, summary and plot under ``demo/``."""
    regions: tuple[Region, ...] = DEFAULT_REGIONS
    """Regions to run, one edge worker each."""
    duration_s: float = Field(default=40.0, gt=0)
    """How long the fleet sends when no story is told (``story.enabled`` false)."""
    rate_per_s: float = Field(default=150.0, gt=0)
    """Requests per second offered by the whole fleet."""
    devices: int = Field(default=60, ge=1)
    """Simulated devices."""
    bad_fraction: float = Field(default=0.02, ge=0, le=1)
    """Share of deliberately bad records (they must land in the dead-letter topics)."""
    deadline_ms: float = Field(default=250.0, gt=0)
    """How long a device waits for the edge before answering with its local fallback model."""
    drain_s: float = Field(default=5.0, ge=0)
    """After sending stops, how long the fleet keeps waiting for outstanding results."""
    worker_ready_timeout_s: float = Field(default=90.0, gt=0)
    """How long to wait for the workers to load models and get their partitions."""
    drain_timeout_s: float = Field(default=30.0, gt=0)
    """After the fleet stops, how long to wait for the workers to consume what is left."""
    aggregator_window_s: float = Field(default=15.0, gt=0)
    """Tumbling window of the cloud aggregator the demo runs. Drift is judged on a window of one
    region's samples from 200 on: at the default rate a region samples about 24 embeddings a second."""
    sample_fraction: float = Field(default=1.0, ge=0, le=1)
    """Share of answered embeddings the workers sample for the cloud (joined there with labels). All of
    them by default: the demo's fleet is small, and drift and retraining need a few hundred."""
    story: StorySettings = StorySettings()
    """The learning loop the demo tells (``workers/local/story.py``): shift, drift, retrain, canary and
    rollback."""
    story_max_s: float = Field(default=420.0, gt=0)
    """The most the fleet sends while the story is told; a story not over by then is reported stalled."""
    kafka: KafkaSettings | None = None
    """Use this already-running Kafka cluster (as an admin identity) instead of the local broker; nothing
    is started or stopped."""
    tls_root: Path | None = None
    """With ``kafka`` over TLS: the PKI whose CA that cluster trusts; the workers' ``edge-<region>`` and
    the devices' ``device-<region>`` certificates are issued from it."""


@dataclass(frozen=True, slots=True)
class DemoPaths:
    """Where the demo writes."""

    root: Path
    logs: Path
    summary: Path
    plot: Path

    story_plot: Path

    @classmethod
    def under(cls, home: Path) -> DemoPaths:
        root = home / "demo"
        return cls(root, root / "logs", root / "summary.json", root / "latency.png", root / "story.png")


@dataclass(frozen=True, slots=True)
class RegionSummary:
    """One row of the summary table."""

    region: str
    sent: int
    bad_sent: int
    results: int
    dead_letters: int
    fallbacks: int
    late: int
    duplicates: int
    throughput_per_s: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    accuracy: float | None
    mean_batch: float | None
    dead_letter_reasons: dict[str, int]


@dataclass(frozen=True, slots=True)
class VersionRow:
    """One version of the story's model on one kind of input, from the devices' own answers."""

    version: int
    role: str
    """``reference``, ``retrained``, ``bad`` (or ``other``)."""
    inputs: str
    """``original``, ``shifted-a`` (before retraining) or ``shifted-b`` (inputs it never trained on)."""
    answers: int
    accuracy: float


@dataclass(frozen=True, slots=True)
class DemoResult:
    """What the demo measured."""

    rows: list[RegionSummary]
    total: RegionSummary
    paths: DemoPaths
    broker_log: Path | None
    """The local broker's log, or None when the demo used another cluster."""
    model_accuracy: dict[str, float]
    cloud: list[dict[str, Any]] = field(default_factory=list)
    """The aggregator's view per (region, model, version), all windows added up: results, dead-letter
    rate, accuracy against the backends' labels, the largest drift judged (windows of enough samples)."""
    story: StoryReport | None = None
    """The learning loop's events and measurements, when told."""
    versions: list[VersionRow] = field(default_factory=list)
    """Accuracy of each version of the story's model on each kind of input, as the devices saw it."""
    bad_after_rollback: int | None = None
    """Answers by the bad candidate to requests captured after every worker applied its rollback."""
    windows: list[dict[str, Any]] = field(default_factory=list)
    """The aggregator's windows of the demo's regions, as its view served them."""
    fleet_started_at: float = 0.0
    """When the fleet started (unix seconds): the story's and the plots' time zero."""


async def _group_at_end(admin: KafkaSettings, group: str, topics: list[str]) -> None:
    """Commit the end offsets of ``topics`` for ``group`` (a new group), so that it starts there."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from edgestream.topics.catalogue import parse_topic

    consumer = AIOKafkaConsumer(**admin.client_kwargs(), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(parse_topic(t).spec.partitions)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.commit({tp: offset for tp, offset in ends.items()})
    finally:
        await consumer.stop()


@contextmanager
def _aggregator(
    settings: DemoSettings, kafka: KafkaSettings, admin: KafkaSettings, paths: DemoPaths
) -> Iterator[str]:
    """Run ``edgestream aggregate run`` (as ``aggregator``); yields its view's URL; always stops it.

    It gets a group and tables of this run's own, starting at the current end of the cloud topics
    (committed for it before it starts): older runs' records, or a backlog an older aggregator left,
    are not this run's story."""
    app_id = f"{AGGREGATOR_GROUP}-demo-{uuid.uuid4().hex[:8]}"
    asyncio.run(_group_at_end(admin, app_id, [SUMMARIES_TOPIC, SAMPLES_TOPIC, LABELS_TOPIC]))
    port = free_port()
    env = {
        **os.environ,
        **kafka.to_env("EDGESTREAM_AGGREGATOR_KAFKA__"),
        "EDGESTREAM_AGGREGATOR_HOME": str(settings.home),
        "EDGESTREAM_AGGREGATOR_WEB_PORT": str(port),
        "EDGESTREAM_AGGREGATOR_WINDOW_S": str(settings.aggregator_window_s),
        "EDGESTREAM_AGGREGATOR_APP_ID": app_id,
    }
    log_path = paths.logs / "aggregator.log"
    paths.logs.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgestream", "aggregate", "run"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _cloud_view(
    url: str, settings: DemoSettings, answered: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The aggregator's windows for the demo's regions, once they count every answer the workers
    committed (bounded by ``drain_timeout_s``): added up per (region, model, version), and as served."""
    regions = {r.name for r in settings.regions}
    deadline = time.monotonic() + settings.drain_timeout_s + settings.worker_ready_timeout_s
    rows: list[dict[str, Any]] = []
    counted_at: float | None = None
    joined_before, steady = -1, 0
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/windows", timeout=5) as response:
                view = json.load(response)
        except (OSError, ValueError):
            time.sleep(0.5)
            continue
        rows = [row for row in view.get("windows", []) if row["region"] in regions]
        if counted_at is None and sum(int(row["results"]) for row in rows) >= answered:
            counted_at = time.monotonic()
        # Summaries arrive with the results; the label join goes through a re-keyed topic and trails
        # them: once every answer is counted, wait until the joined count is above 0 and stops moving
        # (1.5 s), or 15 s more at most.
        joined = sum(int(row["joined"]) for row in rows)
        steady = steady + 1 if joined == joined_before else 0
        joined_before = joined
        if counted_at is not None and steady >= 3 and (joined > 0 or time.monotonic() - counted_at > 15):
            break
        time.sleep(0.5)
    else:
        log.warning("the aggregator's view did not settle at the %d answers the workers committed", answered)
    totals: dict[tuple[str, str, int], dict[str, Any]] = {}
    for row in rows:
        entry = totals.setdefault(
            (row["region"], row["model"], row["version"]),
            {
                "region": row["region"],
                "model": row["model"],
                "version": row["version"],
                "results": 0,
                "dead_letters": 0,
                "joined": 0,
                "correct": 0.0,
                "max_psi": None,
                "drift_flagged": False,
            },
        )
        entry["results"] += int(row["results"])
        entry["dead_letters"] += sum(row["dead_letters"].values())
        if row["accuracy"] is not None:
            entry["joined"] += int(row["joined"])
            entry["correct"] += row["accuracy"] * int(row["joined"])
        psi = row["drift"].get("max_psi")
        if psi is not None and row["drift"].get("samples", 0) >= MIN_SAMPLES:  # judged windows only
            entry["max_psi"] = psi if entry["max_psi"] is None else max(entry["max_psi"], psi)
        entry["drift_flagged"] = entry["drift_flagged"] or bool(row["drift"].get("flagged"))
    out = []
    for entry in totals.values():
        joined = entry.pop("joined")
        correct = entry.pop("correct")
        entry["labelled"] = joined
        entry["accuracy"] = correct / joined if joined else None
        out.append(entry)
    return sorted(out, key=lambda e: (e["region"], e["model"], e["version"])), rows


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextmanager
def _workers(
    settings: DemoSettings, kafka: Callable[[str], KafkaSettings], paths: DemoPaths
) -> Iterator[dict[str, Path]]:
    """Start one worker process per region; always stop them. Yields region -> stats file."""
    procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    stats: dict[str, Path] = {}
    run_dir = paths.root / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    paths.logs.mkdir(parents=True, exist_ok=True)
    try:
        for region in settings.regions:
            ready = run_dir / f"worker-{region.name}.ready"
            ready.unlink(missing_ok=True)
            stats[region.name] = run_dir / f"worker-{region.name}.stats.json"
            stats[region.name].unlink(missing_ok=True)
            log_path = paths.logs / f"worker-{region.name}.log"
            env = {
                **os.environ,
                "EDGESTREAM_WORKER_REGION": region.name,
                "EDGESTREAM_WORKER_HOME": str(settings.home),
                **kafka(region.name).to_env("EDGESTREAM_WORKER_KAFKA__"),
                "EDGESTREAM_WORKER_SAMPLE_FRACTION": str(settings.sample_fraction),
                "EDGESTREAM_WORKER_READY_FILE": str(ready),
                "EDGESTREAM_WORKER_STATS_FILE": str(stats[region.name]),
            }
            if settings.story.enabled:  # follow the registry; report applied revisions every second
                env["EDGESTREAM_WORKER_REGISTRY"] = "true"
                env["EDGESTREAM_WORKER_STATS_INTERVAL_S"] = "1"
            with log_path.open("wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "edgestream", "worker"],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            procs[region.name] = (proc, ready)
        deadline_s = time.monotonic() + settings.worker_ready_timeout_s
        for name, (proc, ready) in procs.items():
            while not ready.exists():
                if proc.poll() is not None:
                    raise DemoError(
                        f"worker {name} exited with {proc.returncode}:\n"
                        f"{_tail(paths.logs / f'worker-{name}.log')}"
                    )
                if time.monotonic() > deadline_s:
                    raise DemoError(f"worker {name} not ready after {settings.worker_ready_timeout_s} s")
                time.sleep(0.1)
        yield stats
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, (proc, _) in procs.items():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                log.warning("worker %s did not stop in 30 s; killing it", name)
                proc.kill()
                proc.wait()


async def _wait_caught_up(bootstrap: Kafka, settings: DemoSettings) -> None:
    """Wait until every region's group has committed to the end of its ingest topics (bounded)."""
    from edgestream.pipeline.kafka import consumer_lag, partitions
    from edgestream.pipeline.settings import kafka_settings

    deadline_s = time.monotonic() + settings.drain_timeout_s
    for region in settings.regions:
        ingest = partitions(
            (t.name, t.spec.partitions) for t in region_topics(region.name) if t.kind is not None
        )
        while True:
            by_tp = await consumer_lag(
                kafka_settings(bootstrap), edge_group(region.name), ingest, client_id="demo"
            )
            lag = sum(by_tp.values())
            if lag == 0:
                break
            if time.monotonic() > deadline_s:
                log.warning(
                    "%s: %d records still unconsumed after %.0f s", region.name, lag, settings.drain_timeout_s
                )
                break
            await asyncio.sleep(0.2)


def _summarise(region: str, report: FleetReport, worker_stats: dict[str, Any]) -> RegionSummary:
    r = report.regions[region] if region in report.regions else report.totals()
    reasons: dict[str, int] = worker_stats.get("dead_letters", {})
    return RegionSummary(
        region=region,
        sent=r.sent,
        bad_sent=r.bad_sent,
        results=r.results,
        dead_letters=sum(reasons.values()),
        fallbacks=r.fallbacks,
        late=r.late,
        duplicates=r.duplicates,
        throughput_per_s=r.results / report.send_s if report.send_s else 0.0,
        p50_ms=r.percentile_ms(50),
        p95_ms=r.percentile_ms(95),
        p99_ms=r.percentile_ms(99),
        accuracy=r.accuracy,
        mean_batch=float(np.mean(r.batch_sizes)) if r.batch_sizes else None,
        dead_letter_reasons=dict(reasons),
    )


def plot_latency(report: FleetReport, path: Path, sla_ms: float = 50.0) -> Path:
    """Latency CDF per region and latency over time; writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (cdf, timeline) = plt.subplots(1, 2, figsize=(12, 4.5))
    answered = any(r.latencies_ms for r in report.regions.values())
    if not answered:
        for ax in (cdf, timeline):
            ax.text(
                0.5,
                0.5,
                "no request was answered by the edge",
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
    for name, r in report.regions.items():
        if not r.latencies_ms:
            continue
        lat = np.sort(np.asarray(r.latencies_ms))
        cdf.plot(
            lat, np.arange(1, len(lat) + 1) / len(lat), label=f"{name} (p99 {np.percentile(lat, 99):.1f} ms)"
        )
        timeline.scatter(r.result_times_s, r.latencies_ms, s=3, alpha=0.5, label=name)
    for ax in (cdf, timeline):
        ax.axvline(sla_ms, color="red", ls="--", lw=1) if ax is cdf else ax.axhline(
            sla_ms, color="red", ls="--", lw=1
        )
    if answered:
        cdf.set_xscale("log")
        cdf.set_xlabel("end-to-end latency, ms (log)")
    cdf.set_ylabel("share of requests")
    cdf.set_title("Latency CDF per region (red: 50 ms SLA)")
    if answered:
        cdf.legend(loc="lower right")
    timeline.set_yscale("log")
    timeline.set_xlabel("seconds since start")
    timeline.set_ylabel("end-to-end latency, ms (log)")
    timeline.set_title("Latency over time")
    if answered:
        timeline.legend(loc="upper right", markerscale=4)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_demo(
    settings: DemoSettings,
    *,
    on_step: Callable[[str], None] = lambda _msg: None,
    on_progress: Callable[[Progress], None] | None = None,
    on_event: Callable[[StoryEvent], None] = lambda _event: None,
) -> DemoResult:
    """Run the demo end to end; every process it started is stopped when it returns or raises."""
    paths = DemoPaths.under(settings.home)
    paths.root.mkdir(parents=True, exist_ok=True)
    broker = LocalBroker(BrokerSettings(home=settings.home))
    if settings.kafka is not None:
        on_step(f"using the Kafka cluster at {settings.kafka}")
        admin, broker_log, stop_broker = settings.kafka, None, False
        pki = Pki(settings.tls_root or settings.home / "tls")
    else:
        stop_broker = broker.status() is None
        on_step("starting the Kafka broker" if stop_broker else "using the running Kafka broker")
        state = broker.start()
        admin, broker_log = state.kafka(), state.server_log
        pki = Pki(state.tls_root or settings.home / "tls")
    secure = admin.security_protocol == "SSL"
    if secure:
        on_step(f"TLS 1.3 with client certificates from {pki.root}; ACLs enforced")

    def worker_kafka(region: str) -> KafkaSettings:
        """A region's workers connect as ``edge-<region>`` (their ACLs cover that region only)."""
        if not secure:
            return admin
        identity = Identity.edge(region)
        files = pki.ensure([identity])[identity]
        return KafkaSettings.tls(admin.bootstrap_servers, files)

    story: StoryReport | None = None
    try:
        key_file = settings.home / "keys.json"
        if not key_file.exists():
            keyfile.create(key_file, [r.name for r in settings.regions])
        on_step("building reference models (cached after the first run)")
        store = ModelStore(settings.home / "models")
        accuracy = {}
        for name in MODEL_FOR_KIND.values():
            for size in ("medium", "tiny"):
                accuracy[f"{name}/{size}"] = store.get(name, size).accuracy
        on_step("creating topics")
        asyncio.run(ensure_topics(admin, all_topics([r.name for r in settings.regions])))
        if secure:
            on_step("granting each region's workers and devices their ACLs")
            asyncio.run(apply_policy(admin, [r.name for r in settings.regions]))
        revision = None
        if settings.story.enabled:
            registry = asyncio.run(prepare_registry(admin, settings.home))
            assert registry.stable is not None
            revision = registry.revision
            on_step(
                f"model registry: {STORY_MODEL} v{registry.stable} (the zoo's reference) is stable, "
                f"signed by the demo's key in {settings.home / 'registry'}"
            )
        on_step(f"starting {len(settings.regions)} edge workers and the cloud aggregator")
        aggregator_kafka = admin
        if secure:
            files = pki.ensure([Identity.aggregator()])[Identity.aggregator()]
            aggregator_kafka = KafkaSettings.tls(admin.bootstrap_servers, files)
        with _aggregator(settings, aggregator_kafka, admin, paths) as aggregator_url:
            with _workers(settings, worker_kafka, paths) as stats_files:
                if revision is not None:
                    _wait_for_revision(stats_files, revision, settings.worker_ready_timeout_s)
                on_step("running the device fleet" + (" and telling the story" if revision else ""))
                fleet_settings = FleetSettings(
                    devices=settings.devices,
                    rate_per_s=settings.rate_per_s,
                    duration_s=settings.story_max_s if settings.story.enabled else settings.duration_s,
                    bad_fraction=settings.bad_fraction,
                    deadline_ms=settings.deadline_ms,
                    drain_s=settings.drain_s,
                    regions=settings.regions,
                    home=settings.home,
                    kafka=admin,  # over TLS the fleet connects as device-<region> instead
                    tls_root=pki.root,
                )
                report, story = asyncio.run(
                    _fleet_and_story(
                        settings,
                        fleet_settings,
                        admin,
                        aggregator_url,
                        stats_files,
                        revision,
                        on_progress,
                        on_event,
                    )
                )
                on_step("waiting for the workers to consume everything sent")
                asyncio.run(_wait_caught_up(admin, settings))
                on_step("stopping workers")
            worker_stats = {
                region: json.loads(path.read_text()) if path.exists() else {}
                for region, path in stats_files.items()
            }
            on_step("reading the aggregator's view")
            answered = sum(int(ws.get("results", 0)) for ws in worker_stats.values())
            cloud, windows = _cloud_view(aggregator_url, settings, answered)
    finally:
        if stop_broker:
            on_step("stopping the Kafka broker")
            broker.stop()
    rows = [_summarise(r.name, report, worker_stats.get(r.name, {})) for r in settings.regions]
    all_reasons: dict[str, int] = {}
    for ws in worker_stats.values():
        for reason, count in ws.get("dead_letters", {}).items():
            all_reasons[reason] = all_reasons.get(reason, 0) + count
    total = _summarise("all", report, {"dead_letters": all_reasons})
    plot_latency(report, paths.plot)
    versions: list[VersionRow] = []
    bad_after: int | None = None
    if story is not None:
        versions = version_rows(report, story)
        bad_after = bad_answers_after_rollback(report, story)
        story.drift_windows = count_drift(story, windows, report.started_at, settings.aggregator_window_s)
        plot_story(report, story, windows, settings.aggregator_window_s, paths.story_plot)
    result = DemoResult(
        rows,
        total,
        paths,
        broker_log,
        accuracy,
        cloud,
        story=story,
        versions=versions,
        bad_after_rollback=bad_after,
        windows=windows,
        fleet_started_at=report.started_at,
    )
    paths.summary.write_text(
        json.dumps(
            {
                "settings": settings.model_dump(mode="json"),
                "regions": [asdict(r) for r in rows],
                "total": asdict(total),
                "model_accuracy": accuracy,
                "send_s": report.send_s,
                "unanswered": report.unanswered,
                "worker_stats": worker_stats,
                "cloud": cloud,
                "story": None if story is None else story.to_dict(),
                "versions": [asdict(v) for v in versions],
                "bad_after_rollback": bad_after,
            },
            indent=2,
        )
    )
    return result


def _wait_for_revision(stats_files: dict[str, Path], revision: int, timeout_s: float) -> None:
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
            raise DemoError(f"workers did not all apply registry revision {revision} in {timeout_s:g} s")
        time.sleep(0.2)  # poll interval of a bounded wait on the files' contents


async def _fleet_and_story(
    settings: DemoSettings,
    fleet_settings: FleetSettings,
    admin: KafkaSettings,
    aggregator_url: str,
    stats_files: dict[str, Path],
    revision: int | None,
    on_progress: Callable[[Progress], None] | None,
    on_event: Callable[[StoryEvent], None],
) -> tuple[FleetReport, StoryReport | None]:
    """Run the fleet, and the story beside it when there is one (it says when the fleet stops)."""
    fleet = make_fleet(fleet_settings)
    if revision is None:
        return await fleet.run(on_progress), None
    from edgestream.pipeline.registry.client import RegistryClient

    reference = (await RegistryClient(admin).read_states())[STORY_MODEL].stable
    assert reference is not None
    story = Story(
        settings.story,
        kafka=admin,
        home=settings.home,
        fleet=fleet,
        view_url=aggregator_url,
        regions=frozenset(r.name for r in settings.regions),
        reference=reference,
        on_event=on_event,
    )
    stop = asyncio.Event()
    told = asyncio.create_task(story.run(stop))
    report = await fleet.run(on_progress, until=stop)
    told.cancel()
    return report, await told


def _role(story: StoryReport, version: int) -> str:
    roles = {story.reference: "reference", story.retrained: "retrained", story.bad: "bad"}
    return roles.get(version, "other")


def version_rows(report: FleetReport, story: StoryReport) -> list[VersionRow]:
    """Accuracy of each version of the story's model per kind of input, from the devices' answers."""
    counts: dict[tuple[int, str], list[int]] = {}
    for answer in report.totals().answers:
        if answer.model != story.model:
            continue
        entry = counts.setdefault((answer.version, answer.inputs), [0, 0])
        entry[0] += 1
        entry[1] += int(answer.correct)
    order = {"original": 0, "shifted-a": 1, "shifted-b": 2}
    keys = sorted(counts, key=lambda k: (k[0], order[k[1]]))
    return [
        VersionRow(
            version,
            _role(story, version),
            inputs,
            counts[version, inputs][0],
            counts[version, inputs][1] / counts[version, inputs][0],
        )
        for version, inputs in keys
    ]


def bad_answers_after_rollback(report: FleetReport, story: StoryReport) -> int | None:
    """Answers by the bad version to requests captured once every worker applied the rollback."""
    if story.bad is None or story.rollback_applied_at_s is None:
        return None
    return sum(
        1
        for a in report.totals().answers
        if a.model == story.model and a.version == story.bad and a.capture_s > story.rollback_applied_at_s
    )
