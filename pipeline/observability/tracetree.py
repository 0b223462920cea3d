"""One request's trace as text: the device's span, the unit span that links to it, and the unit's stage
spans, each with its start (ms after the device's capture) and duration; for the README, a terminal
and ``edgestream sla trace``.

Spans come from the ``file`` exporter (:func:`~edgestream.pipeline.observability.otlpjson.read_spans`):
a device span (kind PRODUCER) is its own trace; a unit span (kind CONSUMER) lives in the worker's trace
and names each request it served in a link; its stage spans are its children.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

PRODUCER: Final = 4
"""OTLP's kind number of a PRODUCER span (the device's request)."""
CONSUMER: Final = 5
"""OTLP's kind number of a CONSUMER span (the worker's unit)."""
SHOWN: Final = (
    "edgestream.outcome",
    "edgestream.model",
    "edgestream.model.version",
    "messaging.batch.message_count",
    "edgestream.unit.close_reason",
    "messaging.kafka.offset",
    "error.type",
)
"""Attributes worth a line's room, in this order."""


def _value(value: Any) -> Any:
    """An OTLP ``AnyValue`` as plain data: a scalar, or an array's values joined by commas."""
    if not isinstance(value, dict):
        return value
    inner = next(iter(value.values()), None)
    if isinstance(inner, dict) and "values" in inner:  # arrayValue
        return ",".join(str(_value(v)) for v in inner["values"])
    return inner


def _attrs(span: Mapping[str, Any]) -> dict[str, Any]:
    return {kv.get("key", ""): _value(kv.get("value", {})) for kv in span.get("attributes", [])}


def _ns(span: Mapping[str, Any], key: str) -> int:
    try:
        return int(span.get(key, 0))
    except (TypeError, ValueError):
        return 0


def pick_request(
    spans: Sequence[Mapping[str, Any]], trace_id: str | None = None, *, slowest: bool = True
) -> Mapping[str, Any] | None:
    """The device span of ``trace_id``; without one, the slowest answered request that a unit span links
    to (the one worth looking at), or with ``slowest`` False the median one (a typical request). None
    when there is none."""
    devices = [s for s in spans if s.get("kind") == PRODUCER]
    if trace_id is not None:
        return next((s for s in devices if s.get("traceId") == trace_id), None)
    linked = {link.get("traceId") for s in spans if s.get("kind") == CONSUMER for link in s.get("links", [])}
    answered = [
        s for s in devices if s.get("traceId") in linked and _attrs(s).get("edgestream.outcome") == "answered"
    ]
    answered.sort(key=lambda s: _ns(s, "endTimeUnixNano") - _ns(s, "startTimeUnixNano"))
    if not answered:
        return None
    return answered[-1] if slowest else answered[(len(answered) - 1) // 2]


def _line(span: Mapping[str, Any], zero_ns: int, depth: int, service: str) -> str:
    start_ms = (_ns(span, "startTimeUnixNano") - zero_ns) / 1e6
    took_ms = (_ns(span, "endTimeUnixNano") - _ns(span, "startTimeUnixNano")) / 1e6
    attrs = _attrs(span)
    shown = " ".join(f"{key.rsplit('.', 1)[-1]}={attrs[key]}" for key in SHOWN if key in attrs)
    name = "  " * depth + str(span.get("name", "?"))
    return f"{start_ms:8.1f} ms {took_ms:8.1f} ms  {name:<40} [{service}] {shown}".rstrip()


def request_tree(spans: Sequence[Mapping[str, Any]], device: Mapping[str, Any]) -> list[str]:
    """Lines for ``device``'s request: its span, each unit span linked to it, and the unit's children
    (the per-record ones only for this request's record), ordered by start."""
    trace_id = device.get("traceId")
    zero = _ns(device, "startTimeUnixNano")
    header = f"{'start':>11} {'took':>11}  span"
    lines = [header, _line(device, zero, 0, _service(device))]
    units = [
        s
        for s in spans
        if s.get("kind") == CONSUMER and any(link.get("traceId") == trace_id for link in s.get("links", []))
    ]
    for unit in sorted(units, key=lambda s: _ns(s, "startTimeUnixNano")):
        lines.append(_line(unit, zero, 1, _service(unit)))
        children = [s for s in spans if s.get("parentSpanId") == unit.get("spanId") and _mine(s, trace_id)]
        for child in sorted(children, key=lambda s: _ns(s, "startTimeUnixNano")):
            lines.append(_line(child, zero, 2, _service(child)))
    return lines


def _mine(span: Mapping[str, Any], trace_id: Any) -> bool:
    """A unit's stage span (no links) or a per-record span linked to this request."""
    links: Iterable[Mapping[str, Any]] = span.get("links", [])
    linked = [link.get("traceId") for link in links]
    return not linked or trace_id in linked


def _service(span: Mapping[str, Any]) -> str:
    resource = span.get("resource", {})
    value = resource.get("service.name", {}) if isinstance(resource, Mapping) else {}
    return str(next(iter(value.values()), "?")) if isinstance(value, dict) else str(value)
