"""What the SDK returns and counts, and how it is set up: `Answer`, `ClientSettings`, `ClientStats`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from edgestream.device.tiers import DeviceClass

Source = Literal["edge", "fallback"]
"""Who answered: the edge (its sealed reply) or the device's local fallback model."""


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """How the SDK behaves; the defaults suit a phone."""

    device_class: DeviceClass = "mid"
    """Caps the tier asked of the edge (``tiers.py``)."""
    location: tuple[float, float] | None = None
    """(lat, lon) for the nearest region; None: the endpoints' order."""
    resend_interval_ms: float = 1000.0
    """Resend an envelope not ``accepted`` after this long (the same bytes); each further wait is
    twice the last."""
    max_resend_interval_ms: float = 8000.0
    """The longest wait between two resends of one envelope. Without the doubling, an edge slow to
    confirm (an overloaded broker) got a copy a second of every unconfirmed request: in the demo on a
    saturated box, 150,000 resends for 9,600 calls, and the overload fed itself."""
    max_age_ms: float = 60_000.0
    """The edge's replay window (``max_age_ms``): no resend past ``ts`` + this - the margin."""
    clock_margin_ms: float = 5_000.0
    """Kept clear of the replay window's end for the clock's error."""
    fallback_reserve_ms: float = 10.0
    """The fallback starts this long before the deadline, so its answer is in time: its run (tens of
    µs for a tiny model) and the event loop waking late on a busy device (measured up to a few ms on
    a loaded 2-core box, ``bench/device``). The floor: the reserve grows by how late the event loop
    has woken lately (``lag_window_s``, ``looplag.py``)."""
    lag_window_s: float = 10.0
    """How long a late wake of the event loop adds to the reserve (0: the fixed reserve only)."""
    max_lag_reserve_ms: float = 100.0
    """The most the reserve grows by, however late the loop was."""
    session_timeout_s: float = 5.0
    """Connect timeout, and how long a dropped session may take to come back before failover."""
    retry_nearest_s: float = 30.0
    """After a failover, how often nearer regions are tried again."""
    offline_ttl_s: float = 30.0
    """Default time to live of queued telemetry (at most the replay window less the margin)."""
    report_interval_s: float = 30.0
    """How often reconciliation reports go out."""
    catalogue_refresh_s: float = 3600.0
    """How often the catalogue is fetched again (new versions, before it expires)."""
    answered_memory: int = 4096
    """Request ids remembered as answered, to drop duplicate replies."""
    tick_s: float = 0.05
    """How often resends, failover and reports are looked at."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What ``infer`` returns."""

    source: Source
    """``edge``: the edge's sealed reply; ``fallback``: the device's local model."""
    request_id: bytes
    model: str
    version: int
    """The model version that answered."""
    tier: str
    """The tier that answered (the fallback's is ``tiny``)."""
    label: int
    probs: tuple[float, ...]
    latency_ms: float
    """From the call to the answer, on the monotonic clock."""
    region: str | None
    """Region whose edge answered, or where the request went (None: not sent)."""
    why: str = ""
    """Why the fallback answered: ``deadline``, ``unavailable`` (no session), ``not_served`` (the
    catalogue names no tier the edge serves), ``backing_off``, ``rejected:<reason>``."""

    @property
    def score(self) -> float:
        """The winning probability."""
        return max(self.probs) if self.probs else float("nan")


@dataclass(slots=True)
class ClientStats:
    """Counts of what the client saw."""

    edge: int = 0
    fallback: Counter[str] = field(default_factory=Counter)
    resends: int = 0
    duplicates: int = 0
    refused_replies: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    actions: Counter[str] = field(default_factory=Counter)
    agreed: int = 0
    disagreed: int = 0
    other_replies: int = 0
    reports_sent: int = 0
