"""What one run measured, as dataclasses that go into ``pipeline.json`` as they are."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.pipeline.machine import CpuUse


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
    """CPU seconds while the fleet ran: per process (far side, broker, fleet), other processes', stolen."""
    cpu_ms_per_request: dict[str, float] | None
    """CPU ms per request sent, by process (``worker``: the far side), counted from outside (/proc)."""
    disturbed: bool
    """Other processes used more than 10% of one core meanwhile, or the hypervisor stole more than
    ``max_steal_share`` of the machine: read this load's numbers with care."""
    longest_silence_ms: float | None = None
    """The longest time a request waited with no answer arriving at all (``measure.longest_silence``);
    None without answers."""
    silence_waiting: int = 0
    """Answered requests waiting when that silence ended (``measure.Silence.waiting``)."""
    stalled: bool = False
    """A silence over ``stall_ms`` that held at least ``stall_share`` of the answered requests: the
    target (or the box under it) stopped answering long enough, for enough requests, to set the p99 by
    itself, which CPU accounting does not see; a ratio over a stalled run says more about the stall
    than about the systems. Marked, not run again: a stall may be the target's own."""
    attempts: int = 1
    """Runs of this load: a disturbed one is run again (``disturbed_retries``) and the least disturbed
    run is kept."""


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
    idle_cpu_share: dict[str, float] | None = None
    """Share of one core the worker and the broker used with the worker running and no traffic (after
    this load caught up); measured at the first load only."""
    spans: dict[str, int] | None = None
    """With tracing on: spans the worker and the fleet exported (warm-up included); None: untraced."""


@dataclass(frozen=True, slots=True)
class EchoRun:
    """The echo floor at one offered load."""

    run: RunStats
    one_hop: Latency
    """Producer record timestamp (ms resolution) -> consumed by the echo process."""
    echoed: int
    """Records the echo process republished (warm-up included)."""


@dataclass(frozen=True, slots=True)
class PeerRun:
    """The Quix Streams peer at one offered load, under one guarantee."""

    run: RunStats
    answered: int
    """Result records the peer built (warm-up included)."""
    refused: dict[str, int]
    """Records it could not answer, by reason."""
    infer_s: float
    """Seconds it spent in onnxruntime (warm-up included)."""


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
    """The pipeline beside its floors at one offered load (the echo: the non-transactional one)."""

    p50_vs_echo_alo: float | None
    p99_vs_echo_alo: float | None
    items_per_s_vs_echo_alo: float | None
    p50_vs_one_hop: float | None
    infer_share_per_item: float | None
    """Bare onnxruntime per item at the observed mean batch (model mix) / pipeline p50."""
    infer_share_batch_run: float | None
    """Bare onnxruntime per batch at the observed mean batch (what a request waits for) / pipeline p50."""


@dataclass(slots=True)
class Level:
    """One offered load, every system (None: the system did not run)."""

    offered_per_s: float
    pipeline: PipelineRun
    pipeline_traced: PipelineRun | None = None
    """The pipeline with tracing on (``pipeline_traced``): devices and worker export spans to files."""
    echo_alo: EchoRun | None = None
    """The echo, acknowledged then committed every 100 ms (at-least-once)."""
    echo_eos: EchoRun | None = None
    """The echo in transactions, one per input partition (exactly-once, as the worker)."""
    peer_alo: PeerRun | None = None
    """The Quix Streams peer at its default at-least-once."""
    peer_eos: PeerRun | None = None
    """The Quix Streams peer at exactly-once."""
    ratios: LevelRatios | None = None

    def run_of(self, system: str) -> RunStats | None:
        """The fleet's view of ``system`` at this load (a `System` name), None when it did not run."""
        measured: PipelineRun | EchoRun | PeerRun | None = getattr(self, system)
        return None if measured is None else measured.run
