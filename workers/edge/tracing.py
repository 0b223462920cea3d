"""The worker's traces: one CONSUMER span per unit, linked to every record's trace.

A unit's records come from many devices, each with its own trace (the device's PRODUCER span, whose
context rides on the record as ``traceparent``). The unit span ``process edge.<region>.ingest`` links
to each of them (OpenTelemetry's answer for batch consumers) and is sampled when any of them is
(`LinkedParentBased`). Its children: per record of a sampled trace, ``admission`` (fetched -> the
unit's checks done) and ``output`` (its outputs built), each linked to its record; per unit,
``inference``, ``reply`` (the fast replies queued) and, once the commit stage has committed the unit,
``commit``. The unit span ends with its commit, so its duration is the unit's whole life in the worker.

Stage spans are made after the fact from timestamps (`UnitTrace.mark`): no context managers on the hot
path, and with tracing off `NO_TRACE` does nothing at all (no header is even looked at). With tracing
on, each answered record's outputs carry its ``traceparent`` (``Item.traceparent``); a record whose
header is malformed, oversized or repeated is processed untraced and counted in ``untraced``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from opentelemetry.trace import (
    Link,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    Tracer,
    set_span_in_context,
)

from edgestream.pipeline.observability.traceparent import TRACEPARENT, format_traceparent, header_value
from edgestream.pipeline.observability.traceparent import parse_traceparent as parse
from edgestream.topics.catalogue import edge_group
from edgestream.workers.edge.admission import Item

RECORD_STAGES = ("admission", "output")
"""Stages with a span per record of a sampled trace (the rest have one per unit)."""


class NoTrace:
    """The trace of a unit that is not traced: every call does nothing."""

    __slots__ = ()

    def mark(self, stage: str) -> None:
        """Nothing to record."""

    def committed(self, started_ns: int, error: BaseException | None = None) -> None:
        """Nothing to end."""


NO_TRACE = NoTrace()
"""The one untraced unit's trace (shared: nothing is made per unit when tracing is off)."""


class UnitTrace(NoTrace):
    """The spans of one sampled unit, made from the marks its stages leave."""

    __slots__ = ("_items", "_last_ns", "_mono_offset_ns", "_span", "_tracer")

    def __init__(
        self, tracer: Tracer, span: Span, sampled: list[tuple[Item, SpanContext]], started_ns: int
    ) -> None:
        self._tracer = tracer
        self._span = span
        self._items = sampled
        self._last_ns = started_ns
        self._mono_offset_ns = started_ns - time.monotonic_ns()  # monotonic -> wall clock

    def mark(self, stage: str) -> None:
        """``stage`` ended now: its span runs from the previous mark (or the unit's start) to now."""
        now_ns = time.time_ns()
        if stage in RECORD_STAGES:
            self._record_spans(stage, now_ns)
        else:
            self._child(stage, self._last_ns).end(now_ns)
        self._last_ns = now_ns

    def committed(self, started_ns: int, error: BaseException | None = None) -> None:
        """The unit's commit (started at ``started_ns``) ended now, failed with ``error`` if given: its
        ``commit`` span, then the unit span, end."""
        now_ns = time.time_ns()
        commit = self._child("commit", started_ns)
        for span in (commit, self._span):
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            span.end(now_ns)

    def _child(self, name: str, start_ns: int, links: Sequence[Link] = ()) -> Span:
        return self._tracer.start_span(
            name, set_span_in_context(self._span), SpanKind.INTERNAL, links=links, start_time=start_ns
        )

    def _record_spans(self, stage: str, now_ns: int) -> None:
        for item, ctx in self._items:
            start_ns = self._last_ns
            if stage == "admission":  # from the moment the record was fetched
                start_ns = int(item.arrived_s * 1e9) + self._mono_offset_ns
            span = self._child(stage, start_ns, (Link(ctx),))
            span.set_attribute("messaging.destination.name", item.tp.topic)
            span.set_attribute("messaging.destination.partition.id", str(item.tp.partition))
            span.set_attribute("messaging.kafka.offset", item.offset)
            if item.error is not None:
                span.set_attribute("error.type", item.error.reason)
                span.set_status(Status(StatusCode.ERROR, item.error.reason))
            span.end(now_ns)


class UnitTracer:
    """Starts the trace of each unit of a region's worker."""

    def __init__(self, tracer: Tracer, region: str) -> None:
        self._tracer = tracer
        self._name = f"process edge.{region}.ingest"
        self._attributes = {
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.consumer.group.name": edge_group(region),
            "edgestream.region": region,
        }
        self.untraced = 0
        """Records whose ``traceparent`` header was present but unusable (malformed, oversized,
        repeated): processed untraced."""

    def unit(self, items: Sequence[Item], reason: str) -> NoTrace:
        """Read the records' contexts (each valid one is kept on its item for its outputs) and start
        the unit span; `NO_TRACE` when it is not sampled."""
        started_ns = time.time_ns()
        links: list[Link] = []
        sampled: list[tuple[Item, SpanContext]] = []
        for item in items:
            if not item.headers:
                continue
            value = header_value(item.headers)
            ctx = parse(value)
            if ctx is None or value is None:
                if value is not None or _repeated(item.headers):
                    self.untraced += 1
                continue
            item.traceparent = value if value[:2] == b"00" else format_traceparent(ctx)
            links.append(Link(ctx))
            if ctx.trace_flags.sampled:
                sampled.append((item, ctx))
        span = self._tracer.start_span(
            self._name,
            kind=SpanKind.CONSUMER,
            attributes={**self._attributes, **unit_attributes(items, reason)},
            links=links,
            start_time=started_ns,
        )
        if not span.is_recording():
            return NO_TRACE
        return UnitTrace(self._tracer, span, sampled, started_ns)


def _repeated(headers: Sequence[tuple[str, bytes]]) -> bool:
    return sum(1 for name, _ in headers if name == TRACEPARENT) > 1


def unit_attributes(items: Sequence[Item], reason: str) -> dict[str, str | int | list[str] | list[int]]:
    """Batch size, close reason, and the (model, version) serving the unit: single values when one does,
    else aligned lists (``edgestream.model[i]`` at ``edgestream.model.version[i]``)."""
    keys = sorted({it.model.key for it in items if it.model is not None})
    attributes: dict[str, str | int | list[str] | list[int]] = {
        "messaging.batch.message_count": len(items),
        "edgestream.unit.close_reason": reason,
    }
    if len(keys) == 1:
        attributes["edgestream.model"], attributes["edgestream.model.version"] = keys[0]
    elif keys:
        attributes["edgestream.model"] = [name for name, _ in keys]
        attributes["edgestream.model.version"] = [version for _, version in keys]
    return attributes


def unit_tracer(tracer: Tracer | None, region: str) -> UnitTracer | NoTracer:
    """The worker's unit tracer: `NO_TRACER` when tracing is off."""
    return NO_TRACER if tracer is None else UnitTracer(tracer, region)


class NoTracer:
    """Tracing off: every unit is `NO_TRACE`, and no record is looked at."""

    __slots__ = ()
    untraced = 0
    """Nothing is read, so nothing is found unusable."""

    def unit(self, items: Sequence[Item], reason: str) -> NoTrace:
        """`NO_TRACE`."""
        del items, reason
        return NO_TRACE


NO_TRACER = NoTracer()
"""The unit tracer of a worker with tracing off."""
