"""The SLA report: what the devices saw, against the declared SLOs (``edgestream sla report``).

Input: JSON lines of device round trips, either

- OTLP JSON (one ``ExportTraceServiceRequest`` per line, as the ``file`` trace exporter writes), whose
  device spans (``send edge.<region>.ingest.<kind>``, with ``edgestream.outcome``) are round trips: the
  span's duration, its region, model, version (absent on a fallback), outcome and deadline; or
- the demo fleet's own request log: one :class:`RoundTrip` per line (:meth:`RoundTrip.to_json`).

Output, per region and model (``version="all"``) and per version that answered: p50/p95/p99 of the
round trips answered, availability (answered in the deadline / sent), the share answered within the
latency threshold, the error budget left of each SLO (1 - bad share / allowed bad share; below 0 the
budget is overspent), and version drift (versions of the model answering in the region at once).
Lines that are not JSON, or device round trips with missing or mistyped fields, are counted as skipped.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np

from edgestream.pipeline.errors import ConfigError
from edgestream.pipeline.observability import slo

Outcome = Literal["answered", "fallback"]
"""How a request ended on the device: the edge's answer in time, or the device's own fallback."""
REQUEST_LOG: Final = "requests.jsonl"
"""The request log's file name in the demo's directory (``<home>/demo``)."""
ALL_VERSIONS: Final = "all"
"""The ``version`` of a row that covers every request of a region and model, fallbacks included."""
CONCURRENCY_WINDOW_MS: Final = 10_000
"""Versions answering within the same window of capture times count as served at once."""
MAX_CONCURRENT_VERSIONS: Final = 2
"""More versions than this served at once (the stable one and a canary) is version drift."""
DEVICE_SPAN_PREFIX: Final = "send "
"""A device span's name starts with this (``send edge.<region>.ingest.<kind>``)."""
ATTR_REGION: Final = "edgestream.region"
"""Device span attribute: the region."""
ATTR_MODEL: Final = "edgestream.model"
"""Device span attribute: the model asked for."""
ATTR_VERSION: Final = "edgestream.model.version"
"""Device span attribute: the version that answered (absent on a fallback)."""
ATTR_OUTCOME: Final = "edgestream.outcome"
"""Device span attribute: ``answered`` or ``fallback``."""
ATTR_DEADLINE: Final = "edgestream.deadline_ms"
"""Device span attribute: the device's deadline in milliseconds."""


class SlaInputError(ConfigError):
    """The report's input cannot be read."""

    reason = "sla_input"


@dataclass(frozen=True, slots=True)
class RoundTrip:
    """One request, as its device saw it."""

    capture_ms: float
    """When the device captured it (Unix milliseconds)."""
    region: str
    """The region the device sent to."""
    model: str
    """The model the device asked for."""
    version: int | None
    """The version that answered; None when the device fell back."""
    latency_ms: float
    """Capture to the reply (answered) or to the fallback."""
    outcome: Outcome
    """Answered by the edge in time, or fallen back."""
    deadline_ms: float | None = None
    """The device's deadline, when known."""
    path: str = "direct"
    """How the device reached the edge: ``direct`` (it produced to Kafka itself) or
    ``phone/<link>`` (an SDK phone through its gateway, over that link profile)."""

    def to_json(self) -> str:
        """One line of the request log."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> RoundTrip:
        """A request-log line's object; raises KeyError, TypeError or ValueError when it is not one."""
        outcome = raw["outcome"]
        if outcome not in ("answered", "fallback"):
            raise ValueError(f"outcome {outcome!r}")
        version = raw.get("version")
        deadline = raw.get("deadline_ms")
        path = raw.get("path", "direct")
        return cls(
            _number(raw["capture_ms"]),
            _text(raw["region"]),
            _text(raw["model"]),
            None if version is None else int(_number(version)),
            _number(raw["latency_ms"]),
            outcome,
            None if deadline is None else _number(deadline),
            _text(path),
        )


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"not a number: {value!r}")
    number = float(value)
    if not np.isfinite(number):
        raise ValueError(f"not finite: {value!r}")
    return number


def _text(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"not a name: {value!r}")
    return value


def write_round_trips(round_trips: Iterable[RoundTrip], path: Path) -> Path:
    """Write ``round_trips`` as the request log (JSON lines) at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for trip in round_trips:
            out.write(trip.to_json() + "\n")
    return path


# -- reading ---------------------------------------------------------------------------------------


def _attribute(value: Mapping[str, Any]) -> object:
    """An OTLP JSON ``AnyValue``'s Python value (int64s are strings in OTLP JSON)."""
    for key in ("stringValue", "doubleValue", "boolValue"):
        if key in value:
            return value[key]
    if "intValue" in value:
        return int(value["intValue"])
    return None


def _spans(line: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for resource in line.get("resourceSpans", ()):
        for scope in resource.get("scopeSpans", ()):
            yield from scope.get("spans", ())


def _span_trip(span: Mapping[str, Any]) -> RoundTrip | None:
    """The round trip a device span records; None for any other span."""
    attrs = {a["key"]: _attribute(a.get("value", {})) for a in span.get("attributes", ())}
    if not str(span.get("name", "")).startswith(DEVICE_SPAN_PREFIX) or ATTR_OUTCOME not in attrs:
        return None
    start_ns = int(span["startTimeUnixNano"])
    end_ns = int(span["endTimeUnixNano"])
    return RoundTrip.from_mapping(
        {
            "capture_ms": start_ns / 1e6,
            "region": attrs.get(ATTR_REGION),
            "model": attrs.get(ATTR_MODEL),
            "version": attrs.get(ATTR_VERSION),
            "latency_ms": (end_ns - start_ns) / 1e6,
            "outcome": attrs[ATTR_OUTCOME],
            "deadline_ms": attrs.get(ATTR_DEADLINE),
        }
    )


def _line_trips(raw: Any) -> list[RoundTrip]:
    if not isinstance(raw, dict):
        raise TypeError("not an object")
    if "resourceSpans" in raw:
        return [trip for span in _spans(raw) if (trip := _span_trip(span)) is not None]
    return [RoundTrip.from_mapping(raw)]


def read_round_trips(paths: Iterable[Path]) -> tuple[list[RoundTrip], int]:
    """The round trips in ``paths`` (OTLP JSON lines or request logs, told apart line by line), and
    how many lines were skipped as malformed. Raises :class:`SlaInputError` for a file not readable."""
    trips: list[RoundTrip] = []
    skipped = 0
    for path in paths:
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise SlaInputError(f"cannot read {path}: {err}") from err
        for line in lines:
            if not line.strip():
                continue
            try:
                trips.extend(_line_trips(json.loads(line)))
            except (ValueError, KeyError, TypeError, AttributeError):
                skipped += 1
    return trips, skipped


# -- the report ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SlaRow:
    """One region and model (``version="all"``, fallbacks included) or one version that answered."""

    region: str
    """The region."""
    model: str
    """The model."""
    version: str
    """The version that answered, or :data:`ALL_VERSIONS`."""
    sent: int
    """Requests sent (a version's row: the requests it answered in time)."""
    answered: int
    """Answered by the edge within the device's deadline."""
    within_threshold: int
    """Of those, answered within the latency SLO's threshold."""
    p50_ms: float | None
    """Median round trip of the requests answered (None without any)."""
    p95_ms: float | None
    """95th percentile round trip of the requests answered (linear interpolation, as numpy's)."""
    p99_ms: float | None
    """99th percentile round trip of the requests answered."""
    availability: float | None
    """answered / sent (only on ``all`` rows: a fallback has no version)."""
    availability_budget_left: float | None
    """1 - (1 - availability) / (1 - availability target); negative when overspent."""
    latency_sli: float | None
    """within_threshold / answered."""
    latency_budget_left: float | None
    """1 - (1 - latency_sli) / (1 - latency target); negative when overspent."""
    versions: int
    """Versions of the model that answered in the region over the report."""
    max_concurrent_versions: int
    """The most versions of the model answering in the region within one concurrency window."""
    drift: bool
    """Whether more than :data:`MAX_CONCURRENT_VERSIONS` answered at once."""


@dataclass(frozen=True, slots=True)
class SlaReport:
    """The rows, the objectives they are judged against, and what was skipped."""

    rows: list[SlaRow]
    """Per region and model, an ``all`` row, then its versions'."""
    latency_threshold_ms: float
    """The latency SLO's threshold."""
    latency_target: float
    """The share of round trips the latency SLO wants within the threshold."""
    availability_target: float
    """The share of requests the availability SLO wants answered."""
    skipped_lines: int
    """Input lines that were not JSON or not a well-formed round trip."""

    def to_dict(self) -> dict[str, Any]:
        """The report as the JSON output holds it."""
        return asdict(self)


def budget_left(good_share: float | None, target: float) -> float | None:
    """The share of an error budget left when ``good_share`` of events were good (None: no events)."""
    if good_share is None:
        return None
    return 1.0 - (1.0 - good_share) / (1.0 - target)


def _percentiles(latencies: list[float]) -> tuple[float | None, float | None, float | None]:
    if not latencies:
        return None, None, None
    p50, p95, p99 = np.percentile(np.asarray(latencies), [50, 95, 99])
    return float(p50), float(p95), float(p99)


def _concurrent(trips: list[RoundTrip]) -> int:
    by_window: dict[int, set[int]] = defaultdict(set)
    for trip in trips:
        if trip.version is not None:
            by_window[int(trip.capture_ms // CONCURRENCY_WINDOW_MS)].add(trip.version)
    return max((len(v) for v in by_window.values()), default=0)


def _row(region: str, model: str, version: str, trips: list[RoundTrip], family: list[RoundTrip]) -> SlaRow:
    answered = [t.latency_ms for t in trips if t.outcome == "answered"]
    fast = sum(1 for ms in answered if ms <= slo.LATENCY_THRESHOLD_S * 1000.0)
    availability = len(answered) / len(trips) if version == ALL_VERSIONS and trips else None
    latency_sli = fast / len(answered) if answered else None
    concurrent = _concurrent(family)
    return SlaRow(
        region,
        model,
        version,
        len(trips),
        len(answered),
        fast,
        *_percentiles(answered),
        availability,
        budget_left(availability, slo.AVAILABILITY.target),
        latency_sli,
        budget_left(latency_sli, slo.LATENCY.target),
        len({t.version for t in family if t.version is not None}),
        concurrent,
        concurrent > MAX_CONCURRENT_VERSIONS,
    )


def sla_report(trips: Iterable[RoundTrip], skipped_lines: int = 0) -> SlaReport:
    """The report of ``trips``: for each region and model an ``all`` row, then one row per version."""
    families: dict[tuple[str, str], list[RoundTrip]] = defaultdict(list)
    for trip in trips:
        families[(trip.region, trip.model)].append(trip)
    rows = []
    for (region, model), family in sorted(families.items()):
        rows.append(_row(region, model, ALL_VERSIONS, family, family))
        by_version: dict[int, list[RoundTrip]] = defaultdict(list)
        for trip in family:
            if trip.version is not None and trip.outcome == "answered":
                by_version[trip.version].append(trip)
        for version, answered in sorted(by_version.items()):
            rows.append(_row(region, model, str(version), answered, family))
    return SlaReport(
        rows,
        slo.LATENCY_THRESHOLD_S * 1000.0,
        slo.LATENCY.target,
        slo.AVAILABILITY.target,
        skipped_lines,
    )
