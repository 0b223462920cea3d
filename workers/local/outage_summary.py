"""The worker outage's counts (``outage.py``), from the fleet's round trips and the episode's times.

Pure functions of records on one clock (unix time): ``RoundTrip``s (every call that got an answer:
the edge's in time, or the device's fallback) and ``NoAnswer``s (calls that got none), both with their
capture time, region and path. Only the outage region's calls count, in two windows by capture time:

- ``down``: from the signal to the restart (the worker was stopped);
- ``restarting``: from the restart to the first edge answer in the region to a call captured since
  the restart (the new worker loading its models, waiting for its partitions, reading the backlog);
  to the end of the run when no edge answer came.

Each window is split by path: ``direct`` (devices that produce to Kafka themselves) and ``phones`` (SDK
phones through the gateway, every link), then ``all``. A device's promise is an answer inside its
deadline, whoever gives it: the rows count who answered, fallbacks inside the deadline, answers past
it, calls never answered, and the largest fallback latency.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final, Protocol

from edgestream.pipeline.observability.sla import RoundTrip
from edgestream.workers.local.outage import OutageTimes

WINDOWS: Final = ("down", "restarting")
"""The outage's windows, in order."""
DIRECT_PATH: Final = "direct"
"""``RoundTrip.path`` of the devices that produce to Kafka themselves; every other path is a phone's."""


class Captured(Protocol):
    """A call on the run's clock: a ``RoundTrip`` or a ``NoAnswer``."""

    @property
    def capture_ms(self) -> float: ...
    @property
    def region(self) -> str: ...
    @property
    def path(self) -> str: ...


@dataclass(frozen=True, slots=True)
class OutageRow:
    """The calls of one path captured in one window of the outage."""

    window: str
    """``down`` or ``restarting`` (module docstring)."""
    path: str
    """``direct``, ``phones`` or ``all``."""
    captured: int
    """Calls captured in the window: answered by someone, or not at all."""
    edge: int
    """Answered by the edge inside the deadline."""
    fallback: int
    """Answered by the device's fallback model."""
    fallback_in_deadline: int
    """... of those, inside the deadline."""
    past_deadline: int
    """Answers (the edge's or the fallback's) that came after the deadline."""
    no_answer: int
    """Calls that got no answer at all (the SDK raised, or the run ended first)."""
    max_fallback_ms: float | None
    """The slowest fallback answer, capture to answer (None without fallbacks)."""


@dataclass(frozen=True, slots=True)
class OutageSummary:
    """The outage episode: its times (seconds) and the rows of its windows."""

    region: str
    signal: str
    deadline_ms: float
    stopped_at_s: float
    """When the worker was signalled, seconds after the fleet started (the plots' zero)."""
    exited_after_s: float
    """From the signal to the worker's exit."""
    down_s: float
    """From the signal to the restart."""
    ready_after_s: float
    """From the restart to the new worker's readiness (models loaded, partitions assigned)."""
    edge_back_after_s: float | None
    """From the restart to the first edge answer in the region (to a call captured since the
    restart); None when none came."""
    edge_back_by_path: dict[str, float | None]
    """The same, per path (``direct``, ``phones``)."""
    rows: list[OutageRow]

    def to_dict(self) -> dict[str, Any]:
        """JSON types."""
        return asdict(self)


def path_group(path: str) -> str:
    """``direct``, or ``phones`` for any phone's link (``phone/<link>``)."""
    return DIRECT_PATH if path == DIRECT_PATH else "phones"


def answered_at_s(trip: RoundTrip) -> float:
    """When the device had its answer (unix seconds)."""
    return (trip.capture_ms + trip.latency_ms) / 1000.0


def edge_back_at(trips: Iterable[RoundTrip], region: str, since: float) -> float | None:
    """When the first edge answer of ``region`` to a call captured at or after ``since`` (unix seconds)
    came; None when none did."""
    times = [
        answered_at_s(t)
        for t in trips
        if t.region == region and t.outcome == "answered" and t.capture_ms / 1000.0 >= since
    ]
    return min(times) if times else None


def window_rows(
    window: str, trips: Sequence[RoundTrip], no_answer: Sequence[Captured], deadline_ms: float
) -> list[OutageRow]:
    """One row per path group present in ``trips`` and ``no_answer`` (the calls of one window), then
    ``all`` when there is more than one."""
    paths = sorted({path_group(c.path) for c in [*trips, *no_answer]})
    rows = [
        _row(
            window,
            path,
            [t for t in trips if path_group(t.path) == path],
            [c for c in no_answer if path_group(c.path) == path],
            deadline_ms,
        )
        for path in paths
    ]
    if len(rows) > 1:
        rows.append(_row(window, "all", trips, no_answer, deadline_ms))
    return rows


def _row(
    window: str, path: str, trips: Sequence[RoundTrip], no_answer: Sequence[Captured], deadline_ms: float
) -> OutageRow:
    def deadline(t: RoundTrip) -> float:
        return t.deadline_ms if t.deadline_ms is not None else deadline_ms

    fallbacks = [t for t in trips if t.outcome == "fallback"]
    return OutageRow(
        window,
        path,
        len(trips) + len(no_answer),
        sum(t.outcome == "answered" and t.latency_ms <= deadline(t) for t in trips),
        len(fallbacks),
        sum(t.latency_ms <= deadline(t) for t in fallbacks),
        sum(t.latency_ms > deadline(t) for t in trips),
        len(no_answer),
        max((t.latency_ms for t in fallbacks), default=None),
    )


def summarise_outage(
    times: OutageTimes,
    trips: Iterable[RoundTrip],
    no_answer: Iterable[Captured],
    *,
    deadline_ms: float,
    fleet_started_at: float,
) -> OutageSummary:
    """The episode's summary from every call of the run (module docstring)."""
    region = times.region
    mine = [t for t in trips if t.region == region]
    lost = [c for c in no_answer if c.region == region]
    back = edge_back_at(mine, region, times.restarted_at)
    bounds = {"down": (times.signalled_at, times.restarted_at), "restarting": (times.restarted_at, back)}
    rows: list[OutageRow] = []
    for window in WINDOWS:
        start, end = bounds[window]
        end_s = math.inf if end is None else end

        def inside(c: Captured, start: float = start, end_s: float = end_s) -> bool:
            return start <= c.capture_ms / 1000.0 < end_s

        rows.extend(
            window_rows(window, [t for t in mine if inside(t)], [c for c in lost if inside(c)], deadline_ms)
        )
    by_path: dict[str, float | None] = {}
    for path in sorted({path_group(t.path) for t in mine}):
        at = edge_back_at([t for t in mine if path_group(t.path) == path], region, times.restarted_at)
        by_path[path] = None if at is None else at - times.restarted_at
    return OutageSummary(
        region=region,
        signal=times.signal,
        deadline_ms=deadline_ms,
        stopped_at_s=times.signalled_at - fleet_started_at,
        exited_after_s=times.exited_at - times.signalled_at,
        down_s=times.restarted_at - times.signalled_at,
        ready_after_s=times.ready_at - times.restarted_at,
        edge_back_after_s=None if back is None else back - times.restarted_at,
        edge_back_by_path=by_path,
        rows=rows,
    )
