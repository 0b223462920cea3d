"""A simulated device's trace of one request: a PRODUCER span from capture to answer (or fallback).

The span ``send edge.<region>.ingest.<kind>`` starts at the request's capture time and ends when the
device has its answer: the edge's reply arrived (``edgestream.outcome=answered``, with the model version
that answered) or the deadline passed and the device answered with its fallback model
(``edgestream.outcome=fallback``). Its duration is the device's round trip, the number the SLO is
about; the SLA report reads it from the ``file`` exporter's lines. Its context rides on the record as
the ``traceparent`` header, which is how the worker's unit span links to it.
"""

from __future__ import annotations

from opentelemetry.trace import Span, SpanKind, Tracer

from edgestream.pipeline.contract.records import ResultRecord
from edgestream.pipeline.observability.traceparent import TRACEPARENT, format_traceparent

MS_NS = 1_000_000
"""Nanoseconds in a millisecond."""

Headers = list[tuple[str, bytes]]
"""Kafka record headers, as aiokafka takes them."""


class DeviceTracing:
    """Starts and ends the devices' request spans."""

    def __init__(self, tracer: Tracer, deadline_ms: float) -> None:
        self._tracer = tracer
        self._deadline_ms = deadline_ms

    def request(self, region: str, model: str, topic: str, capture_ms: int) -> tuple[Span, Headers]:
        """The span of a request captured at ``capture_ms`` and the headers that carry its context."""
        span = self._tracer.start_span(
            f"send {topic}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "send",
                "messaging.destination.name": topic,
                "edgestream.region": region,
                "edgestream.model": model,
                "edgestream.deadline_ms": self._deadline_ms,
            },
            start_time=capture_ms * MS_NS,
        )
        return span, [(TRACEPARENT, format_traceparent(span.get_span_context()))]


def answered(span: Span, result: ResultRecord, now_ms: float) -> None:
    """The edge's answer arrived at ``now_ms`` (in time): the span ends with the version that gave it."""
    span.set_attribute("edgestream.model.version", result.model_version)
    span.set_attribute("edgestream.outcome", "answered")
    span.end(int(now_ms * MS_NS))


def fell_back(span: Span, now_ms: float) -> None:
    """The deadline passed at ``now_ms``: the device answered with its fallback model."""
    span.set_attribute("edgestream.outcome", "fallback")
    span.end(int(now_ms * MS_NS))
