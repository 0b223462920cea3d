"""``edgestream demo``: the whole loop on one machine, then a summary.

Real parts only: a local Kafka broker (started if none is running), the catalogue's topics, one edge
worker process per region, one device gateway process per region (``edgestream gateway``, for the
fleet's SDK phones: ``demo_gateways.py``), the cloud aggregator, and the simulated fleet in this
process. At the end every process this run
started is stopped, and the summary, a JSON copy of it and a latency plot are written.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from aiokafka.errors import KafkaError

from edgestream.pipeline import eventloop
from edgestream.pipeline.errors import BrokerError, EdgestreamError
from edgestream.pipeline.models import ModelStore
from edgestream.pipeline.observability.sla import REQUEST_LOG, write_round_trips
from edgestream.pipeline.security import keyfile
from edgestream.pipeline.security.identities import Identity
from edgestream.pipeline.security.pki import Pki
from edgestream.pipeline.settings import KafkaSettings
from edgestream.topics.acl_admin import apply_policy
from edgestream.topics.admin import ensure_topics
from edgestream.topics.catalogue import (
    all_topics,
    edge_group,
    region_topics,
)
from edgestream.topics.quota_admin import apply_quotas
from edgestream.workers.local.broker.process import LocalBroker
from edgestream.workers.local.broker.settings import BrokerSettings
from edgestream.workers.local.broker.warmup import warm_broker
from edgestream.workers.local.demo_aggregator import running_aggregator
from edgestream.workers.local.demo_gateways import (
    gateway_urls,
    prepare_phone_catalogue,
    running_gateways,
    write_directories,
)
from edgestream.workers.local.demo_result import DemoResult, Measured, summarise, write_summary
from edgestream.workers.local.demo_settings import DemoPaths, DemoSettings
from edgestream.workers.local.demo_waits import wait_for_revision
from edgestream.workers.local.demo_workers import DemoWorkers, running_workers
from edgestream.workers.local.fleet import Fleet, make_fleet
from edgestream.workers.local.fleet_settings import MODEL_FOR_KIND, FleetSettings, Inputs
from edgestream.workers.local.fleetreport import FleetReport, Progress
from edgestream.workers.local.hostcpu import host_cpu, read_ticks
from edgestream.workers.local.outage import OutageTimes, run_outage
from edgestream.workers.local.partcpu import PartSampler
from edgestream.workers.local.story import (
    STORY_MODEL,
    StoryEvent,
    StoryReport,
)
from edgestream.workers.local.story_process import StoryArgs, StoryFailed, end_story, tell_story
from edgestream.workers.local.story_registry import prepare_registry
from edgestream.workers.local.summary import (
    device_agreement,
    settled_windows,
)

log = logging.getLogger(__name__)


class DemoError(EdgestreamError):
    """A part of the demo could not be started."""

    reason = "demo"


@dataclass(frozen=True, slots=True)
class _Cluster:
    """The Kafka cluster the demo runs on, and how its parts connect to it."""

    admin: KafkaSettings
    """An admin identity: topics, ACLs, the registry, reading the labelled samples to retrain on."""
    pki: Pki
    """Where the parts' certificates come from, over TLS."""
    broker_log: Path | None
    """The local broker's log, or None for another cluster."""
    broker_pid: int | None = None
    """The local broker's process (its CPU is the summary's ``broker`` part), or None."""

    @property
    def secure(self) -> bool:
        """TLS with client certificates, and ACLs enforced."""
        return self.admin.security_protocol == "SSL"

    def as_identity(self, identity: Identity) -> KafkaSettings:
        """How a part connects as ``identity`` (whose ACLs cover its own topics only); as the admin
        without TLS."""
        if not self.secure:
            return self.admin
        files = self.pki.ensure([identity])[identity]
        return KafkaSettings.tls(self.admin.bootstrap_servers, files)


def _worker_env(settings: DemoSettings, cluster: _Cluster, region: str) -> dict[str, str]:
    """The environment of ``region``'s worker process (it connects as ``edge-<region>``); its ready
    and stats files are ``DemoWorkers``'."""
    env = {
        **os.environ,
        "EDGESTREAM_WORKER_REGION": region,
        "EDGESTREAM_WORKER_HOME": str(settings.home),
        **cluster.as_identity(Identity.edge(region)).to_env("EDGESTREAM_WORKER_KAFKA__"),
        "EDGESTREAM_WORKER_SAMPLE_FRACTION": str(settings.sample_fraction),
        "EDGESTREAM_WORKER_COMMIT_INTERVAL_MS": str(settings.worker_commit_interval_ms),
    }
    if settings.story.enabled or settings.phone_fraction > 0:  # the versions the phones' tiers name
        env["EDGESTREAM_WORKER_REGISTRY"] = "true"
    if settings.story.enabled:  # report applied revisions every second
        env["EDGESTREAM_WORKER_STATS_INTERVAL_S"] = "1"
    if region == settings.outage_region():  # a killed worker writes no stats at exit: its last second's
        env["EDGESTREAM_WORKER_STATS_INTERVAL_S"] = "1"
    return env


@contextmanager
def _workers(settings: DemoSettings, cluster: _Cluster, paths: DemoPaths) -> Iterator[DemoWorkers]:
    """One worker process per region, each ready; always stopped (``demo_workers.py``)."""
    with running_workers(
        [region.name for region in settings.regions],
        lambda region: _worker_env(settings, cluster, region),
        paths.root / "run",
        paths.logs,
        settings.worker_ready_timeout_s,
    ) as workers:
        yield workers


async def _wait_caught_up(bootstrap: KafkaSettings, settings: DemoSettings) -> None:
    """Wait until every region's group has committed to the end of its ingest topics (bounded)."""
    from edgestream.pipeline.kafka import consumer_lag, partitions

    deadline_s = time.monotonic() + settings.drain_timeout_s
    for region in settings.regions:
        ingest = partitions(
            (t.name, t.spec.partitions) for t in region_topics(region.name) if t.kind is not None
        )
        while True:
            by_tp = await consumer_lag(bootstrap, edge_group(region.name), ingest, client_id="demo")
            lag = sum(by_tp.values())
            if lag == 0:
                break
            if time.monotonic() > deadline_s:
                log.warning(
                    "%s: %d records still unconsumed after %.0f s", region.name, lag, settings.drain_timeout_s
                )
                break
            await asyncio.sleep(0.2)


def _cluster(
    settings: DemoSettings, broker: LocalBroker, on_step: Callable[[str], None]
) -> tuple[_Cluster, bool]:
    """The cluster to use (the local broker, started if none runs); and whether the demo started the
    broker (and so stops it)."""
    if settings.kafka is not None:
        on_step(f"using the Kafka cluster at {settings.kafka}")
        cluster = _Cluster(settings.kafka, Pki(settings.tls_root or settings.home / "tls"), None)
        started = False
    else:
        started = broker.status() is None
        on_step("starting the Kafka broker" if started else "using the running Kafka broker")
        state = broker.start()
        cluster = _Cluster(
            state.kafka(), Pki(state.tls_root or settings.home / "tls"), state.server_log, state.pid
        )
    if cluster.secure:
        on_step(f"TLS 1.3 with client certificates from {cluster.pki.root}; ACLs enforced")
    return cluster, started


def _prepare(
    settings: DemoSettings, cluster: _Cluster, on_step: Callable[[str], None]
) -> tuple[dict[str, float], int | None]:
    """Keys, reference models, topics, ACLs and the registry's start; the models' accuracies, and the
    registry revision the workers must apply before the story starts (None without a story)."""
    regions = [r.name for r in settings.regions]
    key_file = settings.home / "keys.json"
    if not key_file.exists():
        keyfile.create(key_file, regions)
    on_step("building reference models (cached after the first run)")
    store = ModelStore(settings.home / "models")
    accuracy = {}
    # Without the story the phones' tiers are served at the edge (demo_gateways.py): full is built too.
    edge_tiers = settings.phone_fraction > 0 and not settings.story.enabled
    for name in MODEL_FOR_KIND.values():
        for size in ("medium", "tiny", *(("full",) if edge_tiers else ())):
            accuracy[f"{name}/{size}"] = store.get(name, size).accuracy
    on_step("creating topics")
    asyncio.run(ensure_topics(cluster.admin, all_topics(regions)))
    if cluster.secure:
        on_step("granting each region's workers and devices their ACLs")
        asyncio.run(apply_policy(cluster.admin, regions))
        on_step("bounding each region's devices with client quotas (EDGESTREAM_DEVICE_QUOTA_*)")
        asyncio.run(apply_quotas(cluster.admin, regions))
    if settings.phone_fraction > 0:  # the phones' signed catalogue and fallback model, as the gateway serves
        on_step(
            "device catalogue for the phones: each model's reference, and its tiny fallback"
            + ("; tiny and full served at the edge too" if edge_tiers else "")
        )
        asyncio.run(prepare_phone_catalogue(cluster.admin, settings.home, edge_tiers=edge_tiers))
    if not settings.story.enabled:
        return accuracy, None
    registry = asyncio.run(prepare_registry(cluster.admin, settings.home))
    assert registry.stable is not None
    on_step(
        f"model registry: {STORY_MODEL} v{registry.stable} (the zoo's reference) is stable, "
        f"signed by the demo's key in {settings.home / 'registry'}"
    )
    return accuracy, registry.revision


def _fleet_settings(settings: DemoSettings, cluster: _Cluster, gateways: dict[str, str]) -> FleetSettings:
    """The device fleet's settings: the demo's, sending for the story's bound when one is told; its
    phones reach ``gateways`` (region -> URL)."""
    return FleetSettings(
        devices=settings.devices,
        rate_per_s=settings.rate_per_s,
        duration_s=settings.story_max_s if settings.story.enabled else settings.duration_s,
        bad_fraction=settings.bad_fraction,
        deadline_ms=settings.deadline_ms,
        drain_s=settings.drain_s,
        regions=settings.regions,
        home=settings.home,
        kafka=cluster.admin,  # over TLS: devices as device-<region>, labels as backend-<region>
        tls_root=cluster.pki.root,
        phone_fraction=settings.phone_fraction,
        gateways=gateways,
        gateway_ca_file=cluster.pki.ca_file,
    )


@contextmanager
def _gateways(
    settings: DemoSettings, cluster: _Cluster, paths: DemoPaths, on_step: Callable[[str], None]
) -> Iterator[Fleet]:
    """The fleet, its devices enrolled; with phones, one gateway per region running (as
    ``gateway-<region>``) with a directory that names them, until the block ends."""
    urls = gateway_urls(settings.regions) if settings.phone_fraction > 0 else {}
    fleet = make_fleet(_fleet_settings(settings, cluster, {r: url for r, (url, _) in urls.items()}))
    if not fleet.phone_plans:
        yield fleet
        return
    phone_ids = [p.device.device_id for p in fleet.phone_plans]
    write_directories(settings.home, settings.home / "keys.json", urls, phone_ids)
    on_step(f"starting {len(urls)} device gateways for {len(phone_ids)} SDK phones")
    with running_gateways(
        {r: port for r, (_, port) in urls.items()},
        settings.home,
        cluster.pki,
        lambda region: cluster.as_identity(Identity.gateway(region)),
        paths.logs,
        settings.worker_ready_timeout_s,
    ):
        yield fleet


def _run_parts(
    settings: DemoSettings,
    cluster: _Cluster,
    paths: DemoPaths,
    revision: int | None,
    on_step: Callable[[str], None],
    on_progress: Callable[[Progress], None] | None,
    on_event: Callable[[StoryEvent], None],
) -> Measured:
    """Run the aggregator, the workers, the fleet and the story; stop them; read what they counted."""
    on_step(f"starting {len(settings.regions)} edge workers and the cloud aggregator")
    with running_aggregator(
        settings, cluster.admin, cluster.as_identity(Identity.aggregator()), paths
    ) as aggregator_url:
        with _workers(settings, cluster, paths) as workers:
            if revision is not None:
                first = {region: files[0] for region, files in workers.stats_files.items()}
                wait_for_revision(first, revision, settings.worker_ready_timeout_s)
            with _gateways(settings, cluster, paths, on_step) as fleet:
                _warm_broker(settings, cluster, on_step)
                on_step("running the device fleet" + (" and telling the story" if revision else ""))
                ticks_before = read_ticks()
                parts = PartSampler(cluster.broker_pid)
                parts.start()
                started_s = time.monotonic()
                report, story, outage = eventloop.run(
                    _fleet_and_story(
                        settings,
                        fleet,
                        cluster.admin,
                        aggregator_url,
                        revision,
                        on_progress,
                        on_event,
                        workers,
                        on_step,
                    ),
                    settings.event_loop,
                )
                ticks_after = read_ticks()
                part_usage = parts.stop(time.monotonic() - started_s, report.totals().sent)
            on_step("waiting for the workers to consume everything sent")
            asyncio.run(_wait_caught_up(cluster.admin, settings))
            on_step("stopping workers")
        worker_stats = workers.stats()
        on_step("reading the aggregator's view")
        answered = sum(int(ws.get("results", 0)) for ws in worker_stats.values())
        windows = settled_windows(
            aggregator_url,
            {r.name for r in settings.regions},
            answered,
            settings.drain_timeout_s + settings.worker_ready_timeout_s,
        )
        agreement = device_agreement(aggregator_url)
    host = None if ticks_before is None or ticks_after is None else host_cpu(ticks_before, ticks_after)
    return Measured(report, story, worker_stats, windows, agreement, outage, host, part_usage)


def _warm_broker(settings: DemoSettings, cluster: _Cluster, on_step: Callable[[str], None]) -> None:
    """Throwaway traffic on scratch topics, so that the devices' first requests do not meet a broker
    whose JIT has not compiled their paths yet (``broker/warmup.py``). Only on the broker the demo
    started itself (a cluster it is given has been running, and gets no topics of the demo's own);
    none with a 0 s warm-up."""
    if settings.broker_warmup_s <= 0 or cluster.broker_log is None:
        return
    on_step(
        f"warm-up: {settings.broker_warmup_s:g} s of throwaway traffic on scratch topics, so the "
        "devices' first requests meet compiled code"
    )
    try:
        eventloop.run(
            warm_broker(
                cluster.admin, seconds=settings.broker_warmup_s, rate_per_s=settings.broker_warmup_rate_per_s
            ),
            settings.event_loop,
        )
    except (KafkaError, BrokerError, OSError) as err:  # a nicety: the devices start on a cold broker
        log.warning("broker warm-up failed, the devices start without it: %r", err)
        on_step(f"warm-up failed ({type(err).__name__}); the devices start without it")


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
    cluster, stop_broker = _cluster(settings, broker, on_step)
    try:
        accuracy, revision = _prepare(settings, cluster, on_step)
        measured = _run_parts(settings, cluster, paths, revision, on_step, on_progress, on_event)
    finally:
        if stop_broker:
            on_step("stopping the Kafka broker")
            broker.stop()
    result = summarise(settings, paths, cluster.broker_log, accuracy, measured)
    write_summary(settings, result, measured)
    write_round_trips(measured.report.round_trips, paths.root / REQUEST_LOG)  # `edgestream sla report`
    return result


async def _fleet_and_story(
    settings: DemoSettings,
    fleet: Fleet,
    admin: KafkaSettings,
    aggregator_url: str,
    revision: int | None,
    on_progress: Callable[[Progress], None] | None,
    on_event: Callable[[StoryEvent], None],
    workers: DemoWorkers,
    on_step: Callable[[str], None],
) -> tuple[FleetReport, StoryReport | None, OutageTimes | None]:
    """Run the fleet, and the story beside it when there is one (it says when the fleet stops), or the
    worker outage when one is told. The phones start first, so the story's baseline is not spent on
    their start."""
    await fleet.start_phones()
    if revision is None:
        report, outage = await _fleet_and_outage(settings, fleet, workers, on_progress, on_step)
        return report, None, outage
    from edgestream.pipeline.registry.client import RegistryClient

    reference = (await RegistryClient(admin).read_states())[STORY_MODEL].stable
    assert reference is not None
    stop = asyncio.Event()

    def set_inputs(inputs: Inputs) -> None:
        fleet.inputs = inputs

    args = StoryArgs(
        settings.story,
        kafka=admin,
        home=settings.home,
        view_url=aggregator_url,
        regions=frozenset(r.name for r in settings.regions),
        reference=reference,
        started_at=fleet.report.started_at,
        event_loop=settings.event_loop,
        nice=settings.cloud_nice,
        idle=settings.cloud_idle,
        log_level=logging.getLogger().getEffectiveLevel(),
    )
    ready, sending = asyncio.Event(), asyncio.Event()
    told = asyncio.create_task(
        tell_story(args, set_inputs=set_inputs, on_event=on_event, stop=stop, ready=ready, go=sending)
    )
    try:
        await _story_ready(told, ready, settings.worker_ready_timeout_s)
        report = await fleet.run(on_progress, until=stop, sending=sending)
    except BaseException:
        told.cancel()
        await asyncio.gather(told, return_exceptions=True)
        raise
    return report, await end_story(told, stop), None


async def _story_ready(told: asyncio.Task[StoryReport], ready: asyncio.Event, timeout_s: float) -> None:
    """Wait until the story's process is ready (its imports done: its start would otherwise share the
    CPU with the fleet's first requests), or has ended (its error is raised here)."""
    waiting = asyncio.create_task(ready.wait())
    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.wait([told, waiting], return_when=asyncio.FIRST_COMPLETED)
    except TimeoutError:
        raise StoryFailed(f"the story's process was not ready within {timeout_s:g} s") from None
    finally:
        waiting.cancel()
    if told.done() and not ready.is_set():
        await told


async def _fleet_and_outage(
    settings: DemoSettings,
    fleet: Fleet,
    workers: DemoWorkers,
    on_progress: Callable[[Progress], None] | None,
    on_step: Callable[[str], None],
) -> tuple[FleetReport, OutageTimes | None]:
    """Run the fleet; with an outage told, stop and restart the worker beside it (its start counted from
    here, where the fleet starts sending); the outage's times once its worker is ready again."""
    region = settings.outage_region()
    if settings.outage is None or region is None:
        return await fleet.run(on_progress), None
    outage = settings.outage
    on_step(
        f"worker outage: {region}'s worker gets {outage.signal} {outage.start_s:g} s after the fleet "
        f"starts and is started again {outage.duration_s:g} s later"
    )
    episode = asyncio.create_task(run_outage(outage, region, workers, settings.worker_ready_timeout_s))
    try:
        report = await fleet.run(on_progress)
    except BaseException:
        episode.cancel()
        raise
    return report, await episode
