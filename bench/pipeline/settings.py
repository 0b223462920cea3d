"""Settings of ``python -m bench.pipeline`` and the names of what it creates on the broker."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bench import RESULTS_DIR
from edgestream.pipeline.eventloop import EventLoop

PIPELINE_REGION = "bench"
"""Region the edge worker serves."""
ECHO_REGION = "bench-echo"
"""Region the echo floor uses: its own ingest and results topics."""
ECHO_GROUP = "edgestream-bench-echo"
"""Consumer group of the echo process (both of its deliveries)."""
PEER_REGION = "bench-peer"
"""Region the peer uses: its own ingest topics and answers topic, keys in the same key file."""
PEER_GROUP = "edgestream-bench-peer"
"""Consumer group of the peer (both of its guarantees)."""
System = Literal["pipeline", "pipeline_traced", "echo_alo", "echo_eos", "peer_alo", "peer_eos"]
"""What runs at each load: the pipeline, untraced and traced (devices and worker exporting spans to
files, ``trace_sample_ratio`` of requests sampled); the echo acknowledged then committed
(at-least-once) or in transactions (exactly-once); the Quix Streams peer at its default at-least-once
or at exactly-once."""
SYSTEMS: tuple[System, ...] = ("pipeline", "pipeline_traced", "echo_alo", "echo_eos", "peer_alo", "peer_eos")
"""Every system, in the order each load runs them."""
FLOOR_BLOCK = 10
"""Runs timed back to back per point and round in the bare onnxruntime floor."""
MAX_ENVELOPE_BYTES = 1 << 20
"""Envelope size limit when the fleet reads its echoed envelopes back (the worker's default)."""


class BenchSettings(BaseSettings):
    """Settings of ``python -m bench.pipeline`` (``EDGESTREAM_BENCH_*``)."""

    model_config = SettingsConfigDict(
        env_prefix="EDGESTREAM_BENCH_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    loads_per_s: tuple[float, ...] = (100.0, 300.0, 1000.0, 2000.0, 4000.0, 6000.0, 8000.0)
    """Offered loads (requests per second, open loop), each measured for every system. Up to 4,000 every
    system answered every load on the 2-core box, so the highest load sustained said nothing about which
    sustains more; 6,000 and 8,000 are past where they part (2026-12-06: at 8,000 the fleet, sharing the
    two cores, could send only what each system left it the CPU for: the pipeline 7,044/s, the Quix peer
    5,889 and 6,176/s, the echo 7,932/s, each answered in full)."""
    duration_s: float = Field(default=10.0, gt=0)
    """How long the fleet sends at each measured load (at least; see ``min_requests``)."""
    min_requests: int = Field(default=3000, ge=0)
    """Each measured load sends at least this many requests: longer than ``duration_s`` at low loads. At
    100 req/s, 10 s gave 1,000 requests, whose p99 is the 10th slowest: the p99 ratio against the peer
    moved between 0.7x and 2.2x from one run to the next."""

    def duration_for(self, rate_per_s: float) -> float:
        """How long the fleet sends at ``rate_per_s``: ``duration_s``, or long enough for
        ``min_requests``."""
        return max(self.duration_s, self.min_requests / rate_per_s)

    warmup_s: float = Field(default=1.5, ge=0)
    """Discarded warm-up before each measured load, against the same fresh process."""
    warmup_rate_per_s: float = Field(default=200.0, gt=0)
    """Offered load of the warm-up."""
    broker_warmup_s: float = Field(default=5.0, ge=0)
    """Discarded echo traffic right after the broker starts, this long in transactions and as long
    without, so its JIT is warm for every system's requests before the first load."""
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
    systems: tuple[System, ...] = SYSTEMS
    """Which systems run at each load (the pipeline always does); e.g. ``["pipeline","echo_alo"]`` for a
    quick look at the pipeline beside its non-transactional floor."""
    peer_alo_commit_interval_s: float | None = Field(default=None, gt=0)
    """The at-least-once peer's Quix ``commit_interval``; None keeps Quix's default (5 s)."""
    peer_eos_commit_interval_s: float = Field(default=0.1, gt=0)
    """The exactly-once peer's Quix ``commit_interval``: its answers are seen only once committed."""
    idle_s: float = Field(default=5.0, ge=0)
    """After the first load, how long CPU is counted with the worker running and no traffic (0: not)."""
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
    max_steal_share: float = Field(default=0.05, ge=0, le=1)
    """A load during which the hypervisor stole more than this share of the machine's CPU (steal time
    over cores x seconds) is disturbed. Steal explained the day-to-day spread of this box's numbers:
    p99 at 1,000/s moved 2-7x between runs with steal from 0 to 43% of the machine."""
    stall_ms: float = Field(default=100.0, gt=0)
    """A load during which requests waited longer than this with no answer arriving at all, at least
    ``stall_share`` of them together, is marked stalled (``RunStats.stalled``): an echo at 1,000/s once
    had a p99 of 381 ms with a p95 of 7.9 ms from one pause, unseen by the CPU counts, and the
    pipeline's p99 over it looked good."""
    stall_share: float = Field(default=0.01, ge=0, le=1)
    """The share of the answered requests a silence must hold to mark its load stalled: 1%, as many as
    can set the p99 by themselves. Fewer are a tail, not a stall: the exactly-once Quix peer answers a
    run's last few requests about a second late (its last transaction commits late), and a run on
    this box of every system at 2,000/s had a silence of 75-98 ms holding about 1% of requests."""
    max_broker_jit_share: float = Field(default=0.1, ge=0)
    """A load during which the broker's JIT compiler threads used more than this share of one core is
    disturbed too: on this 2-core box a broker still compiling took 0.6 of a core from the first load
    measured after a warm-up of echo traffic alone (``perf sched``, 2026-12-05), 1.5 times the CPU of
    the broker's own request handling."""
    pipeline_warmup_rate_per_s: float = Field(default=1000.0, ge=0)
    """After the echo's warm-up, a pipeline (worker and fleet) is run at this load and thrown away, so
    the broker compiles the pipeline's paths as well (its transactions carry group-fenced offset commits
    and more partitions than the echo's); 0: not."""
    warm_first_load: bool = True
    """After that pipeline, another one at the first load's rate (when it differs), thrown away too: a
    light load takes other paths in the broker (a fetch waits in purgatory for each record instead of
    finding several there), which it still compiled during the first load after a warm-up at 1,000/s
    alone (11-28% of a core at 300/s, 2026-12-06, so that load ran twice or three times)."""
    jit_settle_timeout_s: float = Field(default=60.0, ge=0)
    """After the warm-up, how long to wait at most for the broker's JIT compilers to go quiet (under
    ``jit_quiet_share`` of a core over ``jit_quiet_window_s``) before the first load."""
    jit_quiet_share: float = Field(default=0.02, ge=0)
    """What counts as quiet for the JIT compilers after the warm-up: this share of one core."""
    jit_quiet_window_s: float = Field(default=3.0, gt=0)
    """Over how long the JIT compilers must stay quiet."""
    disturbed_retries: int = Field(default=2, ge=0)
    """How many times a disturbed load is run again; the least disturbed run is kept."""
    sla_ms: float = Field(default=50.0, gt=0)
    """The latency budget drawn on the plot."""
    broker_security: Literal["tls", "plaintext"] = "tls"
    """The bench broker's listener: TLS 1.3 with client certificates and ACLs (as deployed), or
    PLAINTEXT to measure what TLS costs (run both, compare each one's pipeline/echo ratios)."""
    fleet_event_loop: EventLoop = "uvloop"
    """The event loop the bench process (its fleets, the load it offers and the results it reads) runs
    on; ``asyncio`` to compare."""
    broker_jit: Literal["tiered", "c1"] = "tiered"
    """The bench broker's JIT (``BrokerSettings.jit``). ``tiered``, the JVM's default, as a broker that
    has run for long: the local broker's own default (``c1``, for the demo's first minutes) cost the
    broker 0.20 ms CPU per request at 4,000 req/s where ``tiered`` cost 0.08 (two runs, 2026-12-03)."""
    freeze_heaps: bool = True
    """The bench process (its fleets) and the echo freeze their start-up heap out of the cyclic
    collector's walks, as the edge worker does (``pipeline/heap.py``). Unfrozen, each full collection
    walked everything they held: 66-90 ms pauses in the middle of measured loads (2026-12-06, logged
    with ``gc.callbacks``), each delaying every answer the fleet or the echo handled meanwhile. The
    peer is left as its users would write it. False: as before, to compare."""
    trace_sample_ratio: float = Field(default=1.0, ge=0, le=1)
    """Share of requests the devices sample in the ``pipeline_traced`` runs (the worker follows them,
    parent-based); 1.0, every request traced, is the most tracing can cost."""
    capacity_backlog: int = Field(default=30_000, ge=0)
    """After the loads, each system (the traced pipeline aside) is stopped, sent this many requests,
    resumed, and timed draining them (``capacity.py``): its capacity with the fleet out of the way.
    0: not measured."""
    capacity_send_rate_per_s: float = Field(default=8000.0, gt=0)
    """How fast the fleet sends the backlog: the far side stays stopped for about ``capacity_backlog``
    over this, which must stay well inside its consumer group's session timeout (10 s for ours)."""
    capacity_answer_timeout_s: float = Field(default=60.0, gt=0)
    """How long the fleet waits for the drain's answers at most (the devices' deadline in the drain)."""
    seed: int = 7
    """Fleet seed: every load sends the same devices and inputs in the same order."""
    out_dir: Path = RESULTS_DIR
    """Where ``pipeline.json`` and ``pipeline.png`` go."""
    keep_home: bool = False
    """Keep the temporary home (broker and process logs) instead of deleting it."""
    profile_dir: Path | None = None
    """Profile each measured load (``bench/profile``): the far side and the bench process (the fleet)
    sample their stacks, weighted by thread CPU, and ``perf`` records them natively, into this folder.
    None: not profiled. The samplers cost a few percent of CPU, so a profiled run's CPU figures are
    not the ones to compare."""

    @field_validator("systems")
    @classmethod
    def _pipeline_and_order(cls, systems: tuple[System, ...]) -> tuple[System, ...]:
        """Each system once, in `SYSTEMS` order, the pipeline always among them."""
        if "pipeline" not in systems:
            raise ValueError("systems must include 'pipeline' (every ratio is the pipeline's)")
        return tuple(s for s in SYSTEMS if s in systems)
