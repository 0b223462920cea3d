"""The W3C ``traceparent`` Kafka header: read from a record's headers, written on a record's headers.

Headers come from devices and are not trusted (``docs/contract.md``): whatever a header holds, reading it
never raises. A record whose ``traceparent`` is malformed, oversized or repeated is simply untraced
(`record_context` returns None); its processing is not otherwise affected.

The accepted form is W3C Trace Context level 1 (``version-traceid-parentid-flags``, lowercase hex):
version ``00`` is exactly 55 bytes; a later version (not ``ff``) is read by its first 55 bytes when the
next byte is ``-`` (the rule for forward compatibility). A trace id or span id of all zeros is invalid.
"""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry.trace import SpanContext, TraceFlags

TRACEPARENT = "traceparent"
"""The Kafka header that carries the trace context (the only header the contract defines)."""
TRACEPARENT_BYTES = 55
"""Length of a version-00 ``traceparent`` value."""
MAX_TRACEPARENT_BYTES = 512
"""Longest value read at all (a later version may append fields); anything longer is ignored."""
_HEX = frozenset(b"0123456789abcdef")
"""The bytes a lowercase hex field may hold (uppercase is invalid in W3C Trace Context)."""


def _hex_field(value: bytes) -> int | None:
    """The integer of a lowercase hex field; None when it holds anything else."""
    if not _HEX.issuperset(value):
        return None
    return int(value, 16)


def _version_ok(value: bytes) -> bool:
    """Version 00 is exactly 55 bytes; a later one (never ff) is its first 55 bytes and more after a
    ``-``."""
    version = value[:2]
    if version == b"00":
        return len(value) == TRACEPARENT_BYTES
    if version == b"ff" or _hex_field(version) is None:
        return False
    return len(value) == TRACEPARENT_BYTES or value[TRACEPARENT_BYTES] == ord("-")


def parse_traceparent(value: object) -> SpanContext | None:
    """The remote span context a ``traceparent`` value names, or None when it is not a valid one.

    Total: any object (bytes of any length, None, a str) gives a context or None, never an error."""
    if not isinstance(value, bytes) or not TRACEPARENT_BYTES <= len(value) <= MAX_TRACEPARENT_BYTES:
        return None
    if not _version_ok(value):
        return None
    if value[2] != ord("-") or value[35] != ord("-") or value[52] != ord("-"):
        return None
    trace_id = _hex_field(value[3:35])
    span_id = _hex_field(value[36:52])
    flags = _hex_field(value[53:55])
    if not trace_id or not span_id or flags is None:  # None, or all zeros (invalid ids)
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags & 0xFF))


def header_value(headers: Iterable[tuple[str, bytes | None]]) -> bytes | None:
    """The one ``traceparent`` value among ``headers``; None when there is none, or more than one (a
    repeated header is ambiguous, so it counts as absent)."""
    found: bytes | None = None
    seen = False
    for name, value in headers:
        if name == TRACEPARENT:
            if seen:
                return None
            seen = True
            found = value
    return found


def record_context(headers: Iterable[tuple[str, bytes | None]]) -> SpanContext | None:
    """The span context of a record's headers, None when it carries no single valid ``traceparent``."""
    return parse_traceparent(header_value(headers))


def format_traceparent(context: SpanContext) -> bytes:
    """The version-00 ``traceparent`` value of ``context``."""
    return b"00-%032x-%016x-%02x" % (context.trace_id, context.span_id, int(context.trace_flags) & 0xFF)
