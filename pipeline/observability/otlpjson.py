"""The ``file`` trace exporter: OTLP JSON, one export request per line, appended to a file.

Each line is one OTLP ``ExportTraceServiceRequest`` in the protocol's JSON encoding (what an OpenTelemetry
Collector's file exporter writes, and what its ``otlpjsonfile`` receiver reads): ``resourceSpans`` ->
``scopeSpans`` -> ``spans``, trace and span ids as lowercase hex, 64-bit integers (times in unix
nanoseconds, integer attribute values) as decimal strings, ``kind`` and ``status.code`` as OTLP's
numbers. Several processes may append to one file: each line is written with one ``write`` on a file
opened for appending. docs/observability.md ("Traces") describes the format for readers.

A line that cannot be written (disk full, file removed) fails that export, which the SDK logs; it never
raises into the process that made the spans.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Link, SpanContext
from opentelemetry.util.types import AttributeValue

log = logging.getLogger(__name__)

OTLP_SPAN_KIND_OFFSET = 1
"""OTLP numbers span kinds from 1 (INTERNAL) where the Python API numbers them from 0."""


def any_value(value: object) -> dict[str, Any]:
    """An attribute value as an OTLP JSON ``AnyValue``."""
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, Sequence):
        return {"arrayValue": {"values": [any_value(v) for v in value]}}
    return {"stringValue": str(value)}


def key_values(attributes: Mapping[str, AttributeValue] | None) -> list[dict[str, Any]]:
    """Attributes as an OTLP JSON ``KeyValue`` list."""
    return [{"key": k, "value": any_value(v)} for k, v in (attributes or {}).items()]


def _ids(context: SpanContext) -> dict[str, Any]:
    return {"traceId": f"{context.trace_id:032x}", "spanId": f"{context.span_id:016x}"}


def _link(link: Link) -> dict[str, Any]:
    return {
        **_ids(link.context),
        "attributes": key_values(link.attributes),
        "flags": int(link.context.trace_flags),
    }


def span_json(span: ReadableSpan) -> dict[str, Any]:
    """One span as an OTLP JSON ``Span``."""
    context = span.get_span_context()
    assert context is not None, "an exported span has a context"
    out: dict[str, Any] = {**_ids(context), "flags": int(context.trace_flags)}
    if span.parent is not None:
        out["parentSpanId"] = f"{span.parent.span_id:016x}"
    out.update(
        name=span.name,
        kind=span.kind.value + OTLP_SPAN_KIND_OFFSET,
        startTimeUnixNano=str(span.start_time or 0),
        endTimeUnixNano=str(span.end_time or 0),
        attributes=key_values(span.attributes),
        events=[
            {"timeUnixNano": str(e.timestamp), "name": e.name, "attributes": key_values(e.attributes)}
            for e in span.events
        ],
        links=[_link(link) for link in span.links],
        status={"code": span.status.status_code.value, "message": span.status.description or ""},
    )
    return out


def export_request(spans: Iterable[ReadableSpan]) -> dict[str, Any]:
    """Spans grouped by resource, then instrumentation scope, as an OTLP JSON export request."""
    resources: dict[int, tuple[Any, dict[tuple[str, str], list[dict[str, Any]]]]] = {}
    for span in spans:
        resource = span.resource
        _, scopes = resources.setdefault(id(resource), (resource, {}))
        scope = span.instrumentation_scope
        key = (scope.name, scope.version or "") if scope is not None else ("", "")
        scopes.setdefault(key, []).append(span_json(span))
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": key_values(resource.attributes)},
                "scopeSpans": [
                    {"scope": {"name": name, "version": version}, "spans": out}
                    for (name, version), out in scopes.items()
                ],
            }
            for resource, scopes in resources.values()
        ]
    }


class OtlpJsonFileExporter(SpanExporter):
    """Appends each batch of spans to ``path`` as one line of OTLP JSON."""

    def __init__(self, path: Path) -> None:
        self.path = path
        """The file appended to (created if missing)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Write ``spans`` as one line; FAILURE (never an exception) when it cannot be written."""
        if not spans:
            return SpanExportResult.SUCCESS
        line = json.dumps(export_request(spans), separators=(",", ":")).encode() + b"\n"
        with self._lock:
            if self._fd is None:
                return SpanExportResult.FAILURE
            try:
                written = os.write(self._fd, line)
            except OSError as err:
                log.warning("could not write %d spans to %s: %s", len(spans), self.path, err)
                return SpanExportResult.FAILURE
        if written != len(line):
            log.warning("wrote %d of %d bytes of spans to %s", written, len(line), self.path)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Close the file. Idempotent."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Every line is written when exported: nothing is buffered here."""
        del timeout_millis
        return True


def read_spans(path: Path) -> list[dict[str, Any]]:
    """Every span of an OTLP JSON lines file, each with its resource's attributes under ``resource``
    (a plain dict): for tests and reports. Lines that are not JSON are skipped."""
    spans: list[dict[str, Any]] = []
    for line in path.read_text().splitlines():
        try:
            request = json.loads(line)
        except ValueError:
            continue
        for resource_spans in request.get("resourceSpans", []):
            resource = {kv["key"]: kv["value"] for kv in resource_spans["resource"]["attributes"]}
            for scope_spans in resource_spans.get("scopeSpans", []):
                spans.extend({**span, "resource": resource} for span in scope_spans.get("spans", []))
    return spans
