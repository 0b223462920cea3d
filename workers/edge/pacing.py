"""Fetch pacing: under load, one fetch per interval takes what arrived meanwhile, not one record.

Each fetch round trip costs the worker and the broker a fixed amount of CPU (the request and the
response name every assigned partition; aiokafka encodes and decodes them in Python), whatever it
carries. Fetching again as soon as a fetch returns answers at ~1,000 records/s with one or two records
a fetch, so that fixed cost is most of a record's. While records arrive at ``from_per_s`` or faster
(and fast enough that an interval would hold at least ``MIN_RECORDS_PER_INTERVAL`` of them), the
worker waits out the rest of the interval after a fetch that returned records, with its partitions
paused (``Intake.run``, ``intake.py``):
aiokafka fetches in the background and would otherwise fetch the first record that arrives and then
nothing more until it is consumed, so the next fetch takes everything that arrived in the interval.
Slower than that the worker fetches at once: fetches bring few records each anyway, a fetch's fixed
cost spread over few records per second is little CPU, and pacing would only add its wait. The rate
floor lets the interval be long (more records a fetch under load) without pacing a light load that an
interval would hold two records of. A deployment may also give a target of records a fetch
(``fetch_target_records``): the interval then stretches to carry that many at the current rate, up to
``fetch_interval_max_ms``, and shrinks back to ``fetch_interval_ms`` as the rate rises.
"""

from __future__ import annotations

from typing import Final

MIN_RECORDS_PER_INTERVAL: Final = 2.0
"""Pacing is on while the estimated arrival rate would bring at least this many records an interval."""
RATE_WINDOW_S: Final = 0.1
"""The arrival rate is the records fetched over the last window of at least this long."""


class FetchPacing:
    """When the next fetch may start: pure logic, the clock passed in (monotonic seconds)."""

    def __init__(
        self,
        interval_ms: float,
        from_per_s: float = 0.0,
        *,
        target_records: float = 0.0,
        max_interval_ms: float | None = None,
    ) -> None:
        if interval_ms < 0:
            raise ValueError(f"interval_ms must be >= 0, got {interval_ms}")
        if from_per_s < 0:
            raise ValueError(f"from_per_s must be >= 0, got {from_per_s}")
        if target_records < 0:
            raise ValueError(f"target_records must be >= 0, got {target_records}")
        if max_interval_ms is not None and max_interval_ms < interval_ms:
            raise ValueError(f"max_interval_ms ({max_interval_ms}) must be >= interval_ms ({interval_ms})")
        self.interval_s = interval_ms / 1000.0
        """The least interval (the whole interval without ``target_records``)."""
        self.target_records = target_records
        """Records a paced fetch aims to carry: the interval is stretched to ``target_records / rate``,
        within ``interval_s`` and ``max_interval_s``. 0: the interval is fixed."""
        self.max_interval_s = self.interval_s if max_interval_ms is None else max_interval_ms / 1000.0
        """The longest interval a target may stretch it to."""
        self.from_per_s = from_per_s
        """Pacing needs at least this arrival rate, records per second."""
        self.rate_per_s = 0.0
        """Records fetched per second over the last complete window."""
        self._window_start_s: float | None = None
        self._window_records = 0
        self._last_fetch_s = -float("inf")  # when the last fetch that returned records returned

    @property
    def pacing(self) -> bool:
        """Whether fetches are paced now: the rate is at least ``from_per_s`` and would fill an interval
        with enough records."""
        return (
            self.interval_s > 0
            and self.rate_per_s >= self.from_per_s
            and self.rate_per_s * self.interval_s >= MIN_RECORDS_PER_INTERVAL
        )

    def fetched(self, records: int, now_s: float) -> None:
        """A fetch returned ``records`` records at ``now_s``."""
        if self._window_start_s is None:
            self._window_start_s = now_s
        self._window_records += records
        elapsed_s = now_s - self._window_start_s
        if elapsed_s >= RATE_WINDOW_S:
            self.rate_per_s = self._window_records / elapsed_s
            self._window_start_s = now_s
            self._window_records = 0
        if records:
            self._last_fetch_s = now_s

    @property
    def interval_now_s(self) -> float:
        """The interval at the current rate: ``target_records / rate`` within the least and the longest
        interval, or the least one without a target (or a rate)."""
        if self.target_records <= 0 or self.rate_per_s <= 0:
            return self.interval_s
        return min(self.max_interval_s, max(self.interval_s, self.target_records / self.rate_per_s))

    def wait_s(self, now_s: float) -> float:
        """Seconds to wait before the next fetch (0: fetch now)."""
        if not self.pacing:
            return 0.0
        return max(0.0, self._last_fetch_s + self.interval_now_s - now_s)
