"""Numbers from recorded calls (pure functions of `Call` lists, on the run's clock): who answered in a
window, the fallback's share during an outage, when the edge answered again, each device's failover
time, and the per-second timeline the plot draws."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from bench.devicefaults.calls import Call


def done_s(call: Call) -> float:
    """When the call's answer came, on the run's clock."""
    return call.started_s + call.latency_ms / 1000.0


def started_in(calls: Iterable[Call], start_s: float, end_s: float) -> list[Call]:
    """Calls started in ``[start_s, end_s)``."""
    return [c for c in calls if start_s <= c.started_s < end_s]


def answers(calls: Sequence[Call], deadline_ms: float) -> dict[str, Any]:
    """Who answered ``calls``, why the fallback did, and how many answers came after the deadline."""
    sources = Counter(c.source for c in calls)
    late = [c.latency_ms for c in calls if c.source != "error" and c.latency_ms > deadline_ms]
    return {
        "calls": len(calls),
        "edge": sources["edge"],
        "fallback": sources["fallback"],
        "lost": sources["error"],
        "fallback_share": round(sources["fallback"] / len(calls), 4) if calls else None,
        "fallback_why": dict(Counter(c.why for c in calls if c.source == "fallback")),
        "edge_regions": dict(Counter(c.region or "" for c in calls if c.source == "edge")),
        "past_deadline": len(late),
        "latency_ms": _percentiles([c.latency_ms for c in calls if c.source != "error"]),
    }


def first_edge_after(calls: Iterable[Call], region: str, since_s: float) -> float | None:
    """When the first edge answer of ``region`` to a call started at or after ``since_s`` came."""
    times = [done_s(c) for c in calls if c.source == "edge" and c.region == region and c.started_s >= since_s]
    return min(times) if times else None


def failover_s(calls: Sequence[Call], killed_s: float, killed_region: str) -> dict[str, float | None]:
    """Per device: seconds from ``killed_s`` to its first edge answer from another region than
    ``killed_region`` (None: it never came)."""
    out: dict[str, float | None] = {}
    for device in sorted({c.device for c in calls}):
        times = [
            done_s(c)
            for c in calls
            if c.device == device
            and c.source == "edge"
            and c.region not in (None, killed_region)
            and c.started_s >= killed_s
        ]
        out[device] = round(min(times) - killed_s, 3) if times else None
    return out


def spread(values: Iterable[float | None]) -> dict[str, float | None]:
    """p50 and max of the values that exist (None when none does)."""
    present = [v for v in values if v is not None]
    if not present:
        return {"p50": None, "max": None}
    return {"p50": round(float(np.percentile(present, 50)), 3), "max": round(max(present), 3)}


def timeline(calls: Sequence[Call], bin_s: float = 1.0) -> dict[str, list[float] | list[int]]:
    """Answers per ``bin_s`` by when they came: ``t_s`` (each bin's start), ``fallback`` and
    ``edge:<region>`` per region."""
    if not calls:
        return {"t_s": []}
    end = max(done_s(c) for c in calls)
    bins = int(end // bin_s) + 1
    keys = [*sorted({f"edge:{c.region}" for c in calls if c.source == "edge"}), "fallback"]
    series: dict[str, list[int]] = {k: [0] * bins for k in keys}
    for c in calls:
        if c.source == "error":
            continue
        key = f"edge:{c.region}" if c.source == "edge" else "fallback"
        series[key][int(done_s(c) // bin_s)] += 1
    out: dict[str, list[float] | list[int]] = {"t_s": [round(i * bin_s, 3) for i in range(bins)]}
    out.update(series)
    return out


def _percentiles(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "p50": round(float(np.percentile(values, 50)), 2),
        "p99": round(float(np.percentile(values, 99)), 2),
        "max": round(max(values), 2),
    }
