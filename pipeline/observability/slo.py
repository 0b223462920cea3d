"""The declared service-level objectives: what ``deploy/prometheus`` and the SLA report are made from.

Two objectives over a 30-day period, both measured per region:

- **latency**: 99% of requests' round trips take at most 50 ms (the device's capture time to the
  worker's reply: ``edgestream_round_trip_seconds``, whose bucket ``le="0.05"`` counts the good ones);
- **availability**: 99.9% of requests are answered: ``edgestream_records_total{outcome="result"}`` over
  ``result`` and ``dead_letter`` (the system's fault). The worker counts a device's bad input as
  ``refused`` or ``replayed`` (``catalogue.OUTCOMES``): refused by design, it spends no budget.

Alerts are multiwindow, multi-burn-rate: a burn rate of ``f`` spends the whole budget in ``period / f``;
an alert fires when both its long window (is it real?) and its short window (is it still happening?)
burn faster than its factor. The 1x ticket catches a slow leak that would just use up the budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

Severity = Literal["page", "ticket"]
"""How urgent an alert is: ``page`` wakes someone, ``ticket`` is looked at in working hours."""

PERIOD: Final = "30d"
"""The period each error budget covers."""
LATENCY_THRESHOLD_S: Final = 0.05
"""A round trip at most this long is good (the product's p99 < 50 ms, as "99% within 50 ms")."""
LATENCY_BUCKET: Final = "0.05"
"""The ``le`` label of the round-trip histogram's bucket at :data:`LATENCY_THRESHOLD_S`, as the
Prometheus client writes it (``END_TO_END_BUCKETS_S`` has this bound)."""
ANSWERED: Final = "result"
"""The ``outcome`` of ``edgestream_records_total`` that counts an answered record."""
FAILED: Final = "dead_letter"
"""The ``outcome`` of a record dead-lettered for the system's fault (inference or output failed, stale
by the time it was read). A device's bad input is ``refused`` or ``replayed``: not counted."""
REGION_LABEL: Final = "region"
"""The label every SLO is measured per (a constant label of every edgestream series)."""


@dataclass(frozen=True, slots=True)
class Objective:
    """One SLO: the share of good events it promises and how Prometheus counts them."""

    name: str
    """Its name: the ``slo`` label of its recording rules and alerts."""
    target: float
    """The share of events that must be good over :data:`PERIOD` (0.99 is 99%)."""
    summary: str
    """One line saying what it promises."""
    good: str
    """PromQL of the rate of good events per region over ``{window}``."""
    total: str
    """PromQL of the rate of all counted events per region over ``{window}``."""

    @property
    def budget(self) -> float:
        """The share of events allowed to be bad: ``1 - target``."""
        return 1.0 - self.target

    def error_ratio(self, window: str) -> str:
        """PromQL of the share of bad events per region over ``window`` (NaN without events)."""
        good = self.good.format(window=window)
        total = self.total.format(window=window)
        return f"1 - (\n  {good}\n/\n  {total}\n)"


@dataclass(frozen=True, slots=True)
class BurnAlert:
    """One multiwindow burn-rate alert tier."""

    name: str
    """Suffix of the alert's name: ``Fast``, ``Medium``, ``Slow``."""
    long_window: str
    """The window that says the burn is real."""
    short_window: str
    """The window that says it is still going on (the alert resets soon after it stops)."""
    factor: float
    """Burn rate that fires it: the error ratio over both windows exceeds ``factor * budget``."""
    severity: Severity
    """How urgent it is."""
    for_: str
    """How long both windows must stay above before it fires."""

    def spends(self) -> str:
        """How much of the period's budget this burn spends in its long window, in words."""
        return f"{self.factor:g}x the sustainable rate: the {PERIOD} budget gone in {_days(self.factor)}"


def _days(factor: float) -> str:
    days = float(PERIOD.removesuffix("d")) / factor
    return f"{days:.1f} days" if days >= 1 else f"{days * 24:.0f} hours"


def _by_region(expr: str) -> str:
    return f"sum by ({REGION_LABEL}) ({expr})"


LATENCY: Final = Objective(
    name="latency",
    target=0.99,
    summary=f"99% of round trips (capture on the device -> reply) within {LATENCY_THRESHOLD_S * 1000:g} ms",
    good=_by_region(f'rate(edgestream_round_trip_seconds_bucket{{{{le="{LATENCY_BUCKET}"}}}}[{{window}}])'),
    total=_by_region("rate(edgestream_round_trip_seconds_count[{window}])"),
)
"""The latency SLO: p99 < 50 ms, read as 99% of round trips within 50 ms."""

AVAILABILITY: Final = Objective(
    name="availability",
    target=0.999,
    summary="99.9% of requests answered (dead letters for the device's own bad input excluded)",
    good=_by_region(f'rate(edgestream_records_total{{{{outcome="{ANSWERED}"}}}}[{{window}}])'),
    total=_by_region(f'rate(edgestream_records_total{{{{outcome=~"{ANSWERED}|{FAILED}"}}}}[{{window}}])'),
)
"""The availability SLO: 99.9% of the requests a worker could answer, answered."""

OBJECTIVES: Final[tuple[Objective, ...]] = (LATENCY, AVAILABILITY)
"""Every SLO, in the order the generated files list them."""

BURN_ALERTS: Final[tuple[BurnAlert, ...]] = (
    BurnAlert("Fast", "1h", "5m", 14.4, "page", "2m"),
    BurnAlert("Medium", "6h", "30m", 6.0, "page", "15m"),
    BurnAlert("Slow", "3d", "6h", 1.0, "ticket", "1h"),
)
"""The burn-rate tiers (the SRE workbook's): 2% of the budget in 1 h, 5% in 6 h, 10% in 3 days."""

WINDOWS: Final[tuple[str, ...]] = ("5m", "30m", "1h", "6h", "3d")
"""Every window an alert reads: one recording rule per objective and window."""

CONSUMER_LAG_MAX_S: Final = 5.0
"""An ingest partition whose oldest unconsumed record is older than this is behind: every request in
it is past any device's deadline."""
AGGREGATOR_LAG_MAX_S: Final = 300.0
"""The cloud aggregator may fall this far behind (windows close late, nothing is lost)."""
DEAD_LETTER_SHARE_MAX: Final = 0.05
"""A dead-letter reason taking more than this share of a region's records is a spike (the demo's
fleet sends 2% bad records)."""
DEAD_LETTER_MIN_COUNT: Final = 10
"""...and at least this many dead letters in the window, so that a quiet region does not page."""
