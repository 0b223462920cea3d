"""The bench's figures from what it recorded (pure): a region's round trips over the measured window,
the flooder's acknowledged rate over it, counters' growth, the quotas of the sweep."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import numpy as np

from edgestream.pipeline.observability.sla import RoundTrip
from edgestream.workers.local.fleetreport import NoAnswer


def region_window(
    trips: Iterable[RoundTrip],
    no_answer: Iterable[NoAnswer],
    region: str,
    start_ms: float,
    end_ms: float,
    *,
    sla_ms: float,
    deadline_ms: float,
) -> dict[str, Any]:
    """What ``region``'s honest devices saw of the requests they captured in ``[start_ms, end_ms)``:
    sent, answered by the edge (before the fleet's wait ran out), fallen back, p50/p99 of the answered,
    and the shares of the sent answered at all, within ``sla_ms`` and within ``deadline_ms``."""

    def inside(capture_ms: float) -> bool:
        return start_ms <= capture_ms < end_ms

    latencies: list[float] = []
    fallbacks = unanswered = 0
    for trip in trips:
        if trip.region != region or not inside(trip.capture_ms):
            continue
        if trip.outcome == "answered":
            latencies.append(trip.latency_ms)
        else:
            fallbacks += 1
    unanswered = sum(1 for n in no_answer if n.region == region and inside(n.capture_ms))
    sent = len(latencies) + fallbacks + unanswered
    within_sla = sum(1 for ms in latencies if ms <= sla_ms)
    within_deadline = sum(1 for ms in latencies if ms <= deadline_ms)
    p50, p99 = (float(v) for v in np.percentile(latencies, [50, 99])) if latencies else (None, None)
    return {
        "sent": sent,
        "sent_per_s": sent / ((end_ms - start_ms) / 1000.0) if end_ms > start_ms else 0.0,
        "answered": len(latencies),
        "fallbacks": fallbacks,
        "unanswered": unanswered,
        "answered_share": share(len(latencies), sent),
        "p50_ms": p50,
        "p99_ms": p99,
        "max_ms": max(latencies) if latencies else None,
        "within_sla_share": share(within_sla, sent),
        "within_deadline_share": share(within_deadline, sent),
    }


Throttle = Sequence[float]
"""One throttle the broker told a producer: ``(unix s when the client served it, throttle ms)``."""


def recovery_bins(
    trips: Iterable[RoundTrip],
    no_answer: Iterable[NoAnswer],
    region: str,
    origin_ms: float,
    start_ms: float,
    end_ms: float,
    *,
    deadline_ms: float,
    sla_ms: float,
    throttles: Iterable[Throttle] = (),
    bin_s: float = 1.0,
) -> list[dict[str, Any]]:
    """``region``'s requests in bins of ``bin_s`` by capture time relative to ``origin_ms`` (the
    flood's end): the bins from the one holding ``start_ms`` (before the origin, to show the flood
    too) to the last whole one before ``end_ms``. Each bin: its start (``t_s``, s after the origin;
    negative before it), its requests (``sent``), those answered, those answered within
    ``deadline_ms`` and within ``sla_ms`` (counts and shares of the sent; None for an empty bin), the
    p99 of the answered (None without any), and the longest throttle the broker told the region's
    producer in the bin (by when the client served it; 0 without any)."""
    bin_ms = bin_s * 1000.0
    first = int(np.floor((start_ms - origin_ms) / bin_ms)) if start_ms < origin_ms else 0
    n = max(0, int((end_ms - origin_ms) // bin_ms) - first)
    latencies: list[list[float]] = [[] for _ in range(n)]
    sent = [0] * n
    throttled = [0.0] * n

    def slot(at_ms: float) -> int | None:
        i = int((at_ms - origin_ms) // bin_ms) - first
        return i if 0 <= i < n else None

    for trip in trips:
        i = slot(trip.capture_ms) if trip.region == region else None
        if i is not None:
            sent[i] += 1
            if trip.outcome == "answered":
                latencies[i].append(trip.latency_ms)
    for miss in no_answer:
        i = slot(miss.capture_ms) if miss.region == region else None
        if i is not None:
            sent[i] += 1
    for at_s, ms in throttles:
        i = slot(at_s * 1000.0)
        if i is not None:
            throttled[i] = max(throttled[i], float(ms))
    bins = []
    for i in range(n):
        answered = latencies[i]
        on_time = sum(1 for ms in answered if ms <= deadline_ms)
        in_sla = sum(1 for ms in answered if ms <= sla_ms)
        bins.append(
            {
                "t_s": (first + i) * bin_s,
                "sent": sent[i],
                "answered": len(answered),
                "within_deadline": on_time,
                "within_deadline_share": share(on_time, sent[i]),
                "within_sla_share": share(in_sla, sent[i]),
                "p99_ms": float(np.percentile(answered, 99)) if answered else None,
                "throttle_max_ms": throttled[i],
            }
        )
    return bins


def recovered_after_s(bins: Sequence[Mapping[str, Any]], threshold: float) -> float | None:
    """From how long after the flood's end on every bin (``t_s >= 0``; those before are the flood's)
    had at least ``threshold`` of its requests answered within the deadline, to the window's end: the
    start of the first bin of that last good run. An empty bin neither breaks nor starts a run. None
    when the last non-empty bin fell short (never recovered), or no bin after the flood had any
    request."""
    recovered: float | None = None
    for b in bins:
        value = b["within_deadline_share"]
        if b["t_s"] < 0 or value is None:
            continue
        if value >= threshold:
            if recovered is None:
                recovered = float(b["t_s"])
        else:
            recovered = None
    return recovered


def throttle_max_ms(throttles: Iterable[Throttle], start_s: float, end_s: float) -> tuple[float, int]:
    """The longest throttle (ms) a producer was told in ``[start_s, end_s)``, and how many throttled
    responses (throttle > 0) it served then."""
    told = [float(ms) for at_s, ms in throttles if start_s <= at_s < end_s and ms > 0]
    return (max(told) if told else 0.0), len(told)


def backlog_drain(
    at_flood_end: int | None, at_window_end: int | None, span_s: float, *, cleared_below: float = 0
) -> dict[str, Any]:
    """How fast a region's backlog went down between the flood's end and the window's end
    (records/s, a mean: it may have been gone well before the window's end), whether it was gone by
    then (at most ``cleared_below`` left: the requests in flight), and otherwise when it would be gone
    at that pace, in s after the flood's end (a linear estimate; None when it did not go down)."""
    if at_flood_end is None or at_window_end is None or span_s <= 0:
        return {"drain_per_s": None, "cleared_in_window": None, "cleared_after_s_estimate": None}
    drain = (at_flood_end - at_window_end) / span_s
    cleared = at_window_end <= cleared_below
    estimate = None if cleared or drain <= 0 else at_flood_end / drain
    return {"drain_per_s": drain, "cleared_in_window": cleared, "cleared_after_s_estimate": estimate}


def share(part: int, whole: int) -> float | None:
    """``part / whole``; None when ``whole`` is 0."""
    return part / whole if whole else None


Sample = Sequence[float]
"""One note of the flooder's: ``(unix s, records acknowledged so far, bytes acknowledged so far)``."""


def count_at(samples: Sequence[Sample], t: float) -> tuple[float, float]:
    """The acknowledged (records, bytes) at unix time ``t``, interpolated between the flooder's notes
    (its first note before ``t``; its last one after)."""
    if not samples:
        return 0.0, 0.0
    times = [s[0] for s in samples]
    k = bisect.bisect_right(times, t)
    if k == 0:
        return float(samples[0][1]), float(samples[0][2])
    if k == len(samples):
        return float(samples[-1][1]), float(samples[-1][2])
    (t0, r0, b0), (t1, r1, b1) = samples[k - 1][:3], samples[k][:3]
    f = (t - t0) / (t1 - t0) if t1 > t0 else 1.0
    return r0 + f * (r1 - r0), b0 + f * (b1 - b0)


def rate_between(samples: Sequence[Sample], start_s: float, end_s: float) -> tuple[float, float]:
    """Records and bytes per second the broker acknowledged to the flooder over ``[start_s, end_s]``."""
    if end_s <= start_s:
        return 0.0, 0.0
    r0, b0 = count_at(samples, start_s)
    r1, b1 = count_at(samples, end_s)
    span_s = end_s - start_s
    return (r1 - r0) / span_s, (b1 - b0) / span_s


def grown(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, int]:
    """How much each counter grew from ``before`` to ``after`` (keys of either; those that did not
    grow left out)."""
    out = {}
    for key in sorted(set(before) | set(after)):
        delta = int(after.get(key, 0)) - int(before.get(key, 0))
        if delta:
            out[key] = delta
    return out


REQUEST_OVERHEAD_BYTES: Final = 180
"""What a produce request of one record adds to its key, value and headers, as the broker counts it
for a byte-rate quota (the whole request): the request header with the client id (~35 bytes), the
topic name and partition (~75), the record batch header (61) and the record's own framing (~9). A
honest device's producer (no linger) sends about one record per request."""


def honest_produce(phase: Mapping[str, Any]) -> dict[str, Any]:
    """What one region's honest fleet produced in ``phase`` (the busier region): records per second,
    their mean size, and the request bytes per second the broker counts for a quota (estimated, one
    record per request: ``REQUEST_OVERHEAD_BYTES``), which sizes the byte-rate quotas."""
    rows = [r for r in phase["regions"].values() if r.get("honest_record_bytes_per_s") is not None]
    if not rows:
        return {"bytes_per_s": None, "records_per_s": None, "record_bytes": None, "phase": phase["phase"]}
    top = max(rows, key=lambda r: r["honest_record_bytes_per_s"])
    records_per_s = float(top["sent_per_s"])
    return {
        "bytes_per_s": top["honest_record_bytes_per_s"] + REQUEST_OVERHEAD_BYTES * records_per_s,
        "record_bytes_per_s": top["honest_record_bytes_per_s"],
        "records_per_s": records_per_s,
        "record_bytes": top["honest_record_bytes"],
        "request_overhead_bytes": REQUEST_OVERHEAD_BYTES,
        "phase": phase["phase"],
        "note": "bytes_per_s: request bytes as the broker counts a produce quota (record bytes measured: "
        "key, value, headers; plus an estimated request_overhead_bytes per record, one record per request)",
    }


def quota_byte_rates(
    explicit: Sequence[float], factors: Sequence[float], honest_bytes_per_s: float | None
) -> list[tuple[float, float | None]]:
    """The producer byte-rate quotas of the sweep: ``(bytes per second, factor of the honest rate or
    None)``; the explicit rates when given, else each factor times ``honest_bytes_per_s``."""
    if explicit:
        return [(float(rate), None) for rate in explicit]
    if honest_bytes_per_s is None or honest_bytes_per_s <= 0:
        raise ValueError("no honest produce rate measured to size the quota by; set the rates")
    return [(round(f * honest_bytes_per_s), f) for f in factors]
