"""Settings of ``edgestream demo`` (``EDGESTREAM_DEMO_*``), and where the demo writes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgestream.pipeline.eventloop import EventLoop
from edgestream.pipeline.settings import DEFAULT_HOME, DEFAULT_REGIONS, KafkaSettings, Region
from edgestream.workers.local.outage import WorkerOutage
from edgestream.workers.local.story import StorySettings


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
    phone_fraction: float = Field(default=0.2, ge=0, le=1)
    """Share of the devices that are SDK phones: they ask through one ``edgestream gateway`` per region
    with ``EdgeClient.infer``, over simulated links (``workers/local/links.py``), instead of producing
    to Kafka. 0: no phones and no gateways."""
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
    event_loop: EventLoop = "uvloop"
    """The event loop the simulated fleet (and the story's process) runs on, as the edge worker's."""
    cloud_nice: int = Field(default=10, ge=0, le=19)
    """CPU niceness of the demo's cloud part (the aggregator and its simulations; the story's process:
    its reads, retraining and rollout controller). It stands in for machines elsewhere, and on the
    demo's one box it would take the CPU the edge path needs for its deadline: niced, it gets only what
    the edge leaves (its windows are seconds long; nothing waits on it for milliseconds). 0: the same
    priority as the edge."""
    cloud_idle: bool = True
    """Run the demo's cloud part (as ``cloud_nice`` names it) under Linux's ``SCHED_IDLE`` scheduling
    policy as well: it then gets only CPU time no edge process wants, and an edge process that wakes
    takes the CPU from it at once, where a niced process keeps a share and time slices of its own. Five
    alternating pairs of demos (2026-12-06): direct round trips over 50 ms 32-101 (median 52) against
    67-117 (median 80) niced only, p99 lower in four pairs (25.8-47.4 ms against 36.6-56.3). Where the
    policy does not exist (not Linux) the niceness alone applies."""
    worker_commit_interval_ms: float = Field(default=250.0, ge=0)
    """The edge workers' ``commit_interval_ms`` (their default: 100; the demo sets it in the environment
    it starts them with, over any ``EDGESTREAM_WORKER_COMMIT_INTERVAL_MS`` of its own). The devices'
    replies go before any commit; what waits for it is what backends and the cloud read committed
    (results, audit, summaries): commits start at least 250 ms apart here. At the demo's 50 requests per
    second per region a 100 ms interval makes transactions of about five records, each about eight
    broker requests (the worker's and the broker's own), on a box that the demo keeps about 1.8 of its 2
    cores busy: at 250 ms, two demos measured the broker at 0.52-0.58 cores and the workers at
    0.35-0.37, against 0.64 and 0.42."""
    broker_warmup_s: float = Field(default=3.0, ge=0)
    """Before the devices start, this long of throwaway traffic on scratch topics of the broker's
    (``broker/warmup.py``): a freshly started broker's JIT compiles the paths the devices' requests
    take first, instead of during their first seconds. Only on the broker the demo starts itself, not
    on a cluster given by ``kafka``. 0: none."""
    broker_warmup_rate_per_s: float = Field(default=300.0, gt=0)
    """Records per second of that warm-up."""
    story: StorySettings = StorySettings()
    """The learning loop the demo tells (``workers/local/story.py``): shift, drift, retrain, canary and
    rollback."""
    story_max_s: float = Field(default=420.0, gt=0)
    """The most the fleet sends while the story is told; a story not over by then is reported stalled."""
    outage: WorkerOutage | None = None
    """Stop one region's worker while the fleet sends and start it again (``outage.py``); the summary
    then counts who answered the calls captured meanwhile. None (the default): no outage. Only without
    the story (``story.enabled`` false): the story's steps wait for every worker."""
    kafka: KafkaSettings | None = None
    """Use this already-running Kafka cluster (as an admin identity) instead of the local broker; nothing
    is started or stopped."""
    tls_root: Path | None = None
    """With ``kafka`` over TLS: the PKI whose CA that cluster trusts; the workers' ``edge-<region>`` and
    the devices' ``device-<region>`` certificates are issued from it."""

    @model_validator(mode="after")
    def _outage_fits(self) -> DemoSettings:
        """An outage needs the fixed-length run, a region of the demo's, and to end (the worker started
        again) while the fleet still sends, so that the edge's return is seen."""
        outage = self.outage
        if outage is None:
            return self
        if self.story.enabled:
            raise ValueError("outage: runs without the story only (story.enabled false, --no-story)")
        names = [r.name for r in self.regions]
        if outage.region is not None and outage.region not in names:
            raise ValueError(f"outage.region {outage.region!r} is not one of the regions {names}")
        if outage.start_s + outage.duration_s >= self.duration_s:
            raise ValueError(
                f"outage: the worker restarts {outage.start_s + outage.duration_s:g} s after the fleet "
                f"starts, not before it stops ({self.duration_s:g} s): lengthen duration_s"
            )
        return self

    def outage_region(self) -> str | None:
        """The region whose worker the outage stops (None without an outage)."""
        if self.outage is None:
            return None
        return self.outage.region or self.regions[0].name


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
        """The paths under ``<home>/demo``."""
        root = home / "demo"
        return cls(root, root / "logs", root / "summary.json", root / "latency.png", root / "story.png")
