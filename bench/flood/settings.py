"""Settings of ``python -m bench.flood`` (``EDGESTREAM_FLOOD_*``) and the names of what it creates."""

from __future__ import annotations

from pathlib import Path
from typing import Final, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bench import RESULTS_DIR
from edgestream.topics.catalogue import validate_region

REGION_A: Final = "flooda"
"""The flooded region: the flooder holds its device certificate and seals with one of its device keys."""
REGION_B: Final = "floodb"
"""The other region: its own topics and worker, the same broker and machine."""
REGIONS: Final = (validate_region(REGION_A), validate_region(REGION_B))
FLOOD_DEVICE: Final = "flood-00001"
"""The flooding device's id (its Kafka key: every record of the flood lands on one partition)."""

PhaseKind = Literal["baseline", "quota", "flood", "flood_quota", "recovery"]
"""``baseline``: honest fleets alone, no quota; ``quota``: honest fleets alone under the quota (what the
quota costs the honest devices by itself); ``flood``: the flooder too, no quota; ``flood_quota``: the
flooder under the quota (one phase per quota value of the sweep); ``recovery``: the flooder for the
window's first ``recovery_flood_s`` only, then how soon the honest devices are answered again (once
without a quota, then once per quota of the sweep)."""
PHASE_ORDER: Final[tuple[PhaseKind, ...]] = ("baseline", "quota", "flood", "flood_quota", "recovery")


class FloodSettings(BaseSettings):
    """Settings of ``python -m bench.flood`` (``EDGESTREAM_FLOOD_*``)."""

    model_config = SettingsConfigDict(
        env_prefix="EDGESTREAM_FLOOD_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    phases: tuple[PhaseKind, ...] = ("baseline", "quota", "flood", "flood_quota", "recovery")
    """Which phases run, in ``PHASE_ORDER``: each once, ``flood_quota`` once per quota of the sweep."""
    rate_per_s: float = Field(default=200.0, gt=0)
    """Requests per second each region's honest fleet offers (open loop)."""
    duration_s: float = Field(default=15.0, gt=0)
    """How long each phase is measured."""
    warmup_s: float = Field(default=3.0, ge=0)
    """Before each measured window: the fleets (and the flooder) already send, not counted."""
    broker_warmup_s: float = Field(default=10.0, ge=0)
    """Before the phases, a discarded one this long (honest fleets and an unthrottled flood, then fresh
    topics), so the broker's JIT has compiled both paths; 0: none. Without it the first phase measured
    had the broker's JIT compilers at half a core (8 s of their CPU in a 15 s window)."""
    jit_quiet_share: float = Field(default=0.05, ge=0)
    """After the warm-up, the phases wait until the broker's JIT compilers use at most this share of a
    core (over 2 s)..."""
    jit_settle_timeout_s: float = Field(default=30.0, ge=0)
    """...or this long at most."""
    drain_s: float = Field(default=2.0, ge=0)
    """After sending stops, how long the fleets keep listening for outstanding answers."""
    wait_ms: float = Field(default=2000.0, gt=0)
    """How long a honest device waits for the edge before it falls back: long, so that the latency of
    slow answers is measured rather than cut off (``device_deadline_ms`` is the deadline judged)."""
    device_deadline_ms: float = Field(default=250.0, gt=0)
    """The device deadline the shares are judged against (the fleet's default deadline)."""
    sla_ms: float = Field(default=50.0, gt=0)
    """The latency budget: the share answered within it is reported."""
    frame_fraction: float = Field(default=0.5, ge=0, le=1)
    """Share of the honest requests that are frames (the rest embeddings)."""
    devices_per_region: int = Field(default=30, ge=1)
    """Honest devices per region; at the default load each sends 6.7/s, well under the worker's
    per-device rate (50/s)."""
    flood_kind: Literal["embedding", "frame"] = "frame"
    """What the flooder sends: sealed envelopes of this kind, as its honest devices do (a frame envelope
    is about 320 bytes, an embedding 230)."""
    flood_pool: int = Field(default=50_000, ge=1)
    """Envelopes the flooder seals before it floods (each with its own request id and nonce), then
    sends round and round: sealing live (about 11 µs each) would cost the flooder more CPU than
    producing them (on a box whose two cores it shares with the broker and the workers). A copy whose
    request id the worker accepted before is dead-lettered ``replay`` instead of ``rate_limited``."""
    flood_linger_ms: float = Field(default=5.0, ge=0)
    """The flooder's ``linger.ms`` (librdkafka's default): its records go in large batches."""
    flood_nice: int = Field(default=0, ge=0, le=19)
    """The flooder's niceness. A real flooder runs elsewhere; here it shares the box's cores with the
    broker, the workers and the fleets (its CPU is reported: librdkafka's broker thread used about 0.3-0.5
    of a core while the broker throttled it). Raise it to take the flooder's CPU out of the others' way,
    at the price of a weaker flood where the box is busy."""
    flood_capture_ahead_ms: int = Field(default=0, ge=0)
    """Capture times this far ahead of the sealing (at most the worker's ``max_future_skew_ms``, 5 s):
    keeps a backlog fresh longer (records older than ``max_age_ms``, 60 s, are dead-lettered
    ``stale``)."""
    quota_factors: tuple[float, ...] = (2.0, 20.0)
    """Producer byte-rate quotas of the sweep, as multiples of what one region's honest fleet produced
    in the first phase, in request bytes as the broker counts them (the records measured, plus an
    estimated 180 bytes of request per record: the JSON's ``honest_produce``): one ``flood_quota`` phase
    each; the ``quota`` phase runs under the smallest."""
    quota_producer_byte_rates: tuple[float, ...] = (4 * 1024 * 1024, 1_900_000.0)
    """Producer byte-rate quotas of the sweep in bytes per second; when given (as by default), used
    instead of ``quota_factors``. The defaults: edgestream's own (``DeviceQuotas``, 4 MiB/s), and
    1.9 MB/s, about 20x what one region's honest fleet produces here; ``[]`` sizes them by the factors."""
    quota_request_percentage: float | None = Field(default=None, gt=0)
    """The quota's ``request_percentage`` (share of one broker thread's time, in percent), set beside
    the byte rate in every quota phase; None: not set."""
    quota_consumer_byte_rate: float | None = Field(default=None, gt=0)
    """The quota's ``consumer_byte_rate`` (bytes per second the devices may fetch); None: not set."""
    recovery_flood_s: float = Field(default=5.0, gt=0)
    """In a ``recovery`` phase, how long the flood lasts: the flooder, connected during the warm-up,
    floods from the window's start until SIGTERM this long after (it stops producing at once, and the
    phase waits until it exited)."""
    recovery_s: float = Field(default=30.0, gt=0)
    """In a ``recovery`` phase, how long the window goes on after the flood's end (when the flooder
    stopped producing)."""
    recovery_before_s: float = Field(default=2.0, ge=0)
    """The recovery curve starts this long before the flood (within the warm-up: the fleets send)."""
    recovered_share: float = Field(default=0.99, gt=0, le=1)
    """A region has recovered from the second after which every second's requests were answered within
    the deadline at least this often, to the window's end."""
    quota_settle_s: float = Field(default=12.0, ge=0)
    """Before a phase under a quota, how long after the last flooder exited to wait at least. The
    broker keeps the principal's byte rate over its quota window (``quota.window.num`` 11 samples of
    ``quota.window.size.seconds`` 1 s) whether or not a quota is set: a quota set sooner throttles the
    new phase's producers for the flood of the phase before (measured: ``flood_quota`` at 4 MiB/s
    straight after the unthrottled ``flood`` told the honest producer and the new flooder 85 s at
    their first response, and no honest request of the region was answered in the window)."""
    quota_timeout_ms: int = Field(default=10_000, gt=0)
    """How long applying a quota may take until the broker shows it."""
    ready_timeout_s: float = Field(default=90.0, gt=0)
    """How long a worker or the flooder may take to be ready."""
    broker_jit: Literal["tiered", "c1"] = "tiered"
    """The broker's JIT (``BrokerSettings.jit``): ``tiered``, as a broker that has run for long (the
    pipeline bench's choice)."""
    seed: int = 7
    """Fleet seed: every phase sends the same devices and inputs in the same order."""
    out_dir: Path = RESULTS_DIR
    """Where ``flood.json`` and ``flood.png`` go."""
    keep_home: bool = False
    """Keep the temporary home (broker, worker and flooder logs) instead of deleting it."""

    @field_validator("phases")
    @classmethod
    def _ordered(cls, phases: tuple[PhaseKind, ...]) -> tuple[PhaseKind, ...]:
        """Each phase once, in ``PHASE_ORDER``."""
        if not phases:
            raise ValueError("at least one phase")
        return tuple(p for p in PHASE_ORDER if p in phases)

    @field_validator("quota_factors")
    @classmethod
    def _positive(cls, factors: tuple[float, ...]) -> tuple[float, ...]:
        if any(f <= 0 for f in factors):
            raise ValueError("quota factors must be > 0")
        return factors
