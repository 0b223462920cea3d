"""The device fleets the bench drives: one keeping the worker's per-result timings, one awaiting echoes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

from bench.pipeline.context import BenchContext
from bench.pipeline.settings import ECHO_REGION, MAX_ENVELOPE_BYTES
from edgestream.pipeline.contract.envelope import decode_envelope
from edgestream.pipeline.contract.records import ResultRecord
from edgestream.pipeline.observability.otlpjson import OtlpJsonFileExporter
from edgestream.pipeline.observability.tracing import LinkedParentBased, Tracing
from edgestream.pipeline.security.keyring import KeyRing
from edgestream.pipeline.settings import Region
from edgestream.workers.local.fleet import Fleet
from edgestream.workers.local.fleet_settings import FleetSettings

F = TypeVar("F", bound=Fleet)


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


class PipelineFleet(Fleet):
    """The fleet, also keeping the worker's per-result timings."""

    def __init__(self, settings: FleetSettings, keyring: KeyRing, tracing: Tracing | None = None) -> None:
        super().__init__(settings, keyring, tracing)
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


class EchoFleet(Fleet):
    """The fleet, awaiting its own envelopes echoed back instead of results."""

    def _on_records(self, records: list[Any], now_ms: float) -> None:
        for record in records:
            value = record.value()
            if value is not None:
                envelope = decode_envelope(value, max_envelope_bytes=MAX_ENVELOPE_BYTES)
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


def fleet_tracing(path: Path, sample_ratio: float) -> Tracing:
    """The traced pipeline's devices: ``sample_ratio`` of requests sampled, spans appended to ``path``."""
    return Tracing.of(
        [OtlpJsonFileExporter(path)],
        sampler=LinkedParentBased(TraceIdRatioBased(sample_ratio)),
        resource=Resource.create({"service.name": "edgestream-bench-fleet"}),
    )


async def run_fleet_as(
    ctx: BenchContext,
    fleet_type: type[F],
    region: str,
    rate_per_s: float,
    duration_s: float,
    label: str,
    tracing: Tracing | None = None,
) -> F:
    fleet = fleet_type(fleet_settings(ctx, region, rate_per_s, duration_s), ctx.keyring, tracing)
    await fleet.run(ctx.ui.fleet(label, duration_s))
    ctx.ui.end_fleet()
    return fleet
