"""Record size limits: what the broker and the worker's producers accept, and the envelope limit that
follows from them so every record a worker writes fits.

A worker writes, per input record, a result and an audit record (small and bounded: ids, names and a
few numbers, whatever the envelope's size) or a dead letter, which carries the input record whole: its
key, its sealed value, its own headers, plus the error headers. So the largest envelope a worker admits
(``max_envelope_bytes``) is the producer's request limit less room for the rest of a dead letter
(`DEAD_LETTER_HEADROOM_BYTES`). A record that still does not fit (an envelope over ``max_envelope_bytes``
is dead-lettered as ``oversized`` too, and keys and headers are the device's to choose) is dead-lettered
truncated: ``pipeline/contract/deadletter.py``, `bounded_dead_letter`.

Sizes are counted as Kafka's record format v2 does (``DefaultRecordBatch``); `record_size` is an upper
bound of what aiokafka checks against ``max_request_size`` before it sends.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

PRODUCER_MAX_REQUEST_BYTES: Final = 1 << 20
"""``max_request_size`` of the worker's producers (aiokafka's default, set explicitly): a record whose
estimated size is larger is refused by the client before it is sent."""
BROKER_MESSAGE_MAX_BYTES: Final = PRODUCER_MAX_REQUEST_BYTES + 12
"""The broker's ``message.max.bytes`` (Kafka's default, set explicitly by the local broker): the
largest record batch it accepts. At least `PRODUCER_MAX_REQUEST_BYTES`, so whatever a producer sends,
the broker takes."""

BATCH_OVERHEAD_BYTES: Final = 61 + 21
"""A record batch's header (61 bytes) plus the most a record's own framing takes (attributes, offset and
timestamp deltas, length): aiokafka's ``HEADER_STRUCT.size + MAX_RECORD_OVERHEAD``."""
_MAX_VARINT_BYTES: Final = 5
"""A length below 2**31 takes at most 5 bytes as a zigzag varint."""

MAX_KEPT_KEY_BYTES: Final = 1024
"""A dead letter keeps a record key up to this long whole (device ids are at most 128 bytes)."""
MAX_KEPT_ORIGIN_HEADERS_BYTES: Final = 8 * 1024
"""A dead letter keeps the record's own headers whole while they take at most this (`headers_size`)."""
MAX_ERROR_HEADERS_BYTES: Final = 6 * 1024
"""Bound on the error headers a worker adds (a 500-character message, topic, group and node names)."""
DEAD_LETTER_HEADROOM_BYTES: Final = 16 * 1024
"""Room a dead letter needs beyond its value: record framing, a kept key, kept own headers and the error
headers (their bounds above add up to 15,488 bytes)."""
DEFAULT_MAX_ENVELOPE_BYTES: Final = PRODUCER_MAX_REQUEST_BYTES - DEAD_LETTER_HEADROOM_BYTES
"""Default ``max_envelope_bytes`` (1,032,192): an admitted envelope's dead letter always fits whole."""
DEAD_LETTER_PREFIX_BYTES: Final = 64 * 1024
"""How much of a record's value a truncated dead letter keeps."""


def headers_size(headers: Iterable[tuple[str, bytes | None]]) -> int:
    """Upper bound of the bytes ``headers`` take in a record (names UTF-8, each length a varint)."""
    return sum(
        2 * _MAX_VARINT_BYTES + len(name.encode()) + (0 if value is None else len(value))
        for name, value in headers
    )


def record_size(key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, bytes | None]]) -> int:
    """Upper bound of a record's size as a producer checks it against `PRODUCER_MAX_REQUEST_BYTES`."""
    return (
        BATCH_OVERHEAD_BYTES
        + 3 * _MAX_VARINT_BYTES  # key length, value length, header count
        + (0 if key is None else len(key))
        + (0 if value is None else len(value))
        + headers_size(headers)
    )
