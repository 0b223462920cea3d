"""What a simulated fleet saw (``fleet.py``): per region, per request answered or not, and the
snapshots its progress display shows. Plain records: the demo's summary, the SLA report and the bench
read them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgestream.pipeline.observability.sla import RoundTrip
from edgestream.workers.local.fleet_settings import Inputs
from edgestream.workers.local.phones import DeviceRow


@dataclass(frozen=True, slots=True)
class Answer:
    """One request the edge answered (in time or late), as the device saw it."""

    capture_s: float
    """When the device captured it, seconds since the fleet started."""
    model: str
    version: int
    """The model version that answered (from the result)."""
    correct: bool
    """Whether the answer equals the true label."""
    inputs: Inputs
    """Where the input was drawn from."""
    late: bool = False
    """Whether it came after the device's deadline (the device had answered with its fallback)."""


@dataclass(frozen=True, slots=True)
class NoAnswer:
    """A good request that got no answer at all (the SLA's round trips hold only answered ones)."""

    capture_ms: float
    """When the device captured it (unix milliseconds)."""
    region: str
    """The device's region."""
    path: str
    """``direct`` or ``phone/<link>`` (as ``RoundTrip.path``)."""
    why: str
    """``error`` (the phone's SDK raised: counted by reason in the devices' rows), ``cancelled`` (the
    phone's call was still under way when the fleet stopped), ``run_ended`` (a Kafka-native device's
    request still awaited when the fleet stopped)."""


@dataclass(slots=True)
class RegionReport:
    """What one region's devices saw."""

    sent: int = 0
    bad_sent: int = 0
    results: int = 0
    correct: int = 0
    fallbacks: int = 0
    fallback_correct: int = 0
    late: int = 0
    duplicates: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    result_times_s: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)

    def percentile_ms(self, q: float) -> float | None:
        """End-to-end latency percentile over answered requests, or None without answers."""
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else None

    @property
    def accuracy(self) -> float | None:
        """Share of edge answers whose class equals the true label."""
        return self.correct / self.results if self.results else None


@dataclass(slots=True)
class FleetReport:
    """The whole fleet's run."""

    regions: dict[str, RegionReport]
    started_at: float
    send_s: float
    total_s: float
    unanswered: int
    round_trips: list[RoundTrip] = field(default_factory=list)
    """Every good request that ended (answered in time, or fallen back), for the SLA report."""
    no_answer: list[NoAnswer] = field(default_factory=list)
    """Every good request that did not (none, when every device kept its promise)."""
    devices: list[DeviceRow] = field(default_factory=list)
    """What the SDK phones saw, per device class and link profile (none without phones)."""
    phones_not_started: dict[str, int] = field(default_factory=dict)
    """Phones whose SDK did not start, by reason."""
    refused_replies: dict[str, int] = field(default_factory=dict)
    """Replies the Kafka-native devices read but refused to open (another device's, tampered), by
    reason."""
    loop_lag_peak_ms: dict[str, float] = field(default_factory=dict)
    """The latest the fleet's event loop woke past a timer, per path (``direct``: the Kafka-native
    devices' sweep; ``phones``: the SDKs' timers): what the fallbacks' reserve had to cover."""

    def totals(self) -> RegionReport:
        """All regions added up (latency lists concatenated)."""
        out = RegionReport()
        for r in self.regions.values():
            for name in (
                "sent",
                "bad_sent",
                "results",
                "correct",
                "fallbacks",
                "fallback_correct",
                "late",
                "duplicates",
            ):
                setattr(out, name, getattr(out, name) + getattr(r, name))
            out.latencies_ms.extend(r.latencies_ms)
            out.batch_sizes.extend(r.batch_sizes)
            out.answers.extend(r.answers)
        return out


@dataclass(frozen=True, slots=True)
class Progress:
    """A snapshot for a progress display."""

    elapsed_s: float
    duration_s: float
    sent: int
    answered: int
    fallbacks: int
    p99_ms: float | None
