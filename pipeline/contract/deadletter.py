"""Dead letters: the error headers a worker writes, and a dead letter read back from a DLQ topic.

A dead letter is the failed record exactly as it was received (key, sealed value, the record's own
headers) plus error headers in the ``edgestream.errors.`` namespace. The layout follows Kafka Connect's
dead letter queue (``__connect.errors.topic``, ``.partition``, ``.offset``, ``.stage``,
``.exception.class.name``, ``.exception.message``): the same suffixes under our own prefix, every value
UTF-8 text, integers in decimal, so ``kcat -f '%h'`` or any Kafka UI shows them as they are. Not Spring
Kafka's ``kafka_dlt-*``: it encodes partition, offset and timestamp as big-endian binary. Our prefix, not
``__connect.``: tools that key on Connect's headers would take these records for a connector's. Fields
Connect lacks (reason code, consumer group, key id, attempt, times) use the same dotted style, with units
in their names as Kafka configs have them (``retention.ms``).

A replay sends a dead letter's key, value and own headers back to its origin topic, marked with
``edgestream.replayed-from`` and an incremented ``edgestream.attempt``; a worker that dead-letters it
again copies that attempt into ``edgestream.errors.attempt``, so a repeat failure is visible.

Pure logic: no Kafka client here (``edgestream dlq`` reads and replays).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, get_args

from edgestream.pipeline.contract.limits import (
    DEAD_LETTER_PREFIX_BYTES,
    MAX_KEPT_KEY_BYTES,
    MAX_KEPT_ORIGIN_HEADERS_BYTES,
    PRODUCER_MAX_REQUEST_BYTES,
    headers_size,
    record_size,
)
from edgestream.pipeline.errors import EdgestreamError, RecordFailed, Stage

ERRORS_PREFIX: Final = "edgestream.errors."
"""Namespace of the error headers; a failed record's own headers in it are dropped, never trusted."""
REASON: Final = ERRORS_PREFIX + "reason"
"""Stable reason code of the error (`EdgestreamError.reason`), e.g. ``bad_tag``."""
STAGE: Final = ERRORS_PREFIX + "stage"
"""Where the record failed: decode, decrypt, decompress, validate, infer or produce."""
ORIGIN_TOPIC: Final = ERRORS_PREFIX + "topic"
"""Topic the failed record was consumed from (Connect: ``__connect.errors.topic``)."""
ORIGIN_PARTITION: Final = ERRORS_PREFIX + "partition"
"""Its partition (Connect: ``__connect.errors.partition``)."""
ORIGIN_OFFSET: Final = ERRORS_PREFIX + "offset"
"""Its offset (Connect: ``__connect.errors.offset``)."""
ORIGIN_TIMESTAMP_MS: Final = ERRORS_PREFIX + "origin.timestamp.ms"
"""Its Kafka timestamp, unix ms (Spring: ``kafka_dlt-original-timestamp``)."""
GROUP_ID: Final = ERRORS_PREFIX + "group.id"
"""Consumer group that consumed it (Spring: ``kafka_dlt-original-consumer-group``)."""
WORKER_ID: Final = ERRORS_PREFIX + "worker.id"
"""Node id of the worker that dead-lettered it (Connect: ``connector.name`` / ``task.id``)."""
EXCEPTION_CLASS: Final = ERRORS_PREFIX + "exception.class.name"
"""Qualified class name of the error, e.g. ``edgestream.pipeline.errors.ShapeMismatch``."""
EXCEPTION_MESSAGE: Final = ERRORS_PREFIX + "exception.message"
"""The error's message (built from typed fields, never payload), at most `MAX_MESSAGE_CHARS`."""
KEY_ID: Final = ERRORS_PREFIX + "key.id"
"""Master key id the envelope names; present only when the envelope was decoded."""
ATTEMPT: Final = ERRORS_PREFIX + "attempt"
"""Which delivery of the record failed: 1 for the device's own, n + 1 after n replays."""
DEAD_LETTERED_AT_MS: Final = ERRORS_PREFIX + "dead.lettered.at.ms"
"""When the worker dead-lettered it, unix ms."""
TRUNCATED: Final = ERRORS_PREFIX + "truncated"
"""Only on a dead letter too large to produce whole: what was cut, a comma list of `TRUNCATED_PARTS`.
Such a dead letter is evidence, never replayed."""
ORIGINAL_SIZE: Final = ERRORS_PREFIX + "original.size.bytes"
"""With `TRUNCATED`: the length of the record's value as received."""
ORIGINAL_SHA256: Final = ERRORS_PREFIX + "original.sha256"
"""With `TRUNCATED`: the SHA-256 of the record's value as received, lowercase hex."""
TRUNCATED_PARTS: Final = ("value", "key", "headers")
"""What a truncated dead letter may have cut: its value (to `DEAD_LETTER_PREFIX_BYTES`), its key (to
`MAX_KEPT_KEY_BYTES`) or the record's own headers (dropped past `MAX_KEPT_ORIGIN_HEADERS_BYTES`)."""

REQUIRED_HEADERS: Final = (
    REASON,
    STAGE,
    ORIGIN_TOPIC,
    ORIGIN_PARTITION,
    ORIGIN_OFFSET,
    ORIGIN_TIMESTAMP_MS,
    GROUP_ID,
    WORKER_ID,
    EXCEPTION_CLASS,
    EXCEPTION_MESSAGE,
    ATTEMPT,
    DEAD_LETTERED_AT_MS,
)
"""Headers every dead letter carries; `KEY_ID` is the only optional one."""

REPLAYED_FROM: Final = "edgestream.replayed-from"
"""On a replayed ingest record: the dead letter it came from, ``<dlq topic>[<partition>]@<offset>``."""
DELIVERY_ATTEMPT: Final = "edgestream.attempt"
"""On a replayed ingest record: its delivery attempt (absent on a device's own record: attempt 1)."""

MAX_MESSAGE_CHARS: Final = 500
"""Longest error message kept in a header; longer ones end with an ellipsis."""

_SHA256_RE: Final = re.compile(r"[0-9a-f]{64}")
_STAGES: Final[dict[str, Stage]] = {stage: stage for stage in get_args(Stage)}
_INT_RE: Final = re.compile(r"-?[0-9]{1,19}")
_TOPIC_RE: Final = re.compile(r"[a-zA-Z0-9._-]{1,249}")
"""Kafka's legal topic names (and not ``.`` or ``..``)."""


class MalformedDeadLetter(EdgestreamError):
    """A record on a DLQ topic lacks the error headers of an edgestream dead letter, or has bad ones."""

    reason = "bad_dead_letter"
    stage = "decode"

    def __init__(self, topic: str, partition: int, offset: int, problems: Sequence[str]) -> None:
        super().__init__(
            f"{position(topic, partition, offset)} is not an edgestream dead letter: {'; '.join(problems)}"
        )
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.problems = tuple(problems)
        """Each missing or unreadable header, in header order."""


class KafkaRecord(Protocol):
    """What `DeadLetter.from_record` reads from a record (aiokafka's ``ConsumerRecord`` has it)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes | None]]: ...


def position(topic: str, partition: int, offset: int) -> str:
    """``topic[partition]@offset``: how a record's place is written in headers and output."""
    return f"{topic}[{partition}]@{offset}"


def _message(error: BaseException) -> str:
    text = str(error)
    if len(text) > MAX_MESSAGE_CHARS:
        return text[: MAX_MESSAGE_CHARS - 1] + "…"
    return text


def _class_name(error: BaseException) -> str:
    if isinstance(error, RecordFailed):
        return error.cause_class  # what went wrong, not the wrapper saying it was unexpected
    cls = type(error)
    return f"{cls.__module__}.{cls.__qualname__}"


def dead_letter_headers(
    *,
    error: EdgestreamError,
    origin_topic: str,
    origin_partition: int,
    origin_offset: int,
    origin_timestamp_ms: int,
    group_id: str,
    worker_id: str,
    key_id: int | None,
    attempt: int,
    now_ms: int,
    origin_headers: Iterable[tuple[str, bytes | None]] = (),
) -> list[tuple[str, bytes]]:
    """Headers of the dead letter of one failed record: its own headers, then the error headers.

    ``origin_headers`` are the failed record's headers (``traceparent``, replay marks); they are kept,
    as Kafka Connect keeps them, except any in the ``edgestream.errors.`` namespace, so a record cannot
    forge its own error context. ``attempt`` is `attempt_of` the failed record's headers.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    kept = [(k, v) for k, v in origin_headers if v is not None and not k.startswith(ERRORS_PREFIX)]
    headers = [
        (REASON, error.reason),
        (STAGE, error.stage),
        (ORIGIN_TOPIC, origin_topic),
        (ORIGIN_PARTITION, str(origin_partition)),
        (ORIGIN_OFFSET, str(origin_offset)),
        (ORIGIN_TIMESTAMP_MS, str(origin_timestamp_ms)),
        (GROUP_ID, group_id),
        (WORKER_ID, worker_id),
        (EXCEPTION_CLASS, _class_name(error)),
        (EXCEPTION_MESSAGE, _message(error)),
        (ATTEMPT, str(attempt)),
        (DEAD_LETTERED_AT_MS, str(now_ms)),
    ]
    if key_id is not None:
        headers.append((KEY_ID, str(key_id)))
    return kept + [(name, text.encode()) for name, text in headers]


def bounded_dead_letter(
    key: bytes | None,
    value: bytes,
    headers: Sequence[tuple[str, bytes]],
    *,
    limit_bytes: int = PRODUCER_MAX_REQUEST_BYTES,
    cut_from: tuple[int, str] | None = None,
) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """The key, value and headers to produce for a dead letter (``headers`` from `dead_letter_headers`).

    The record whole when `record_size` says it fits ``limit_bytes`` and its key is at most
    `MAX_KEPT_KEY_BYTES`. Otherwise a truncated copy that always fits: the value's first
    `DEAD_LETTER_PREFIX_BYTES`, the key's first `MAX_KEPT_KEY_BYTES`, the record's own headers only if
    they take at most `MAX_KEPT_ORIGIN_HEADERS_BYTES`, and `TRUNCATED`, `ORIGINAL_SIZE` and
    `ORIGINAL_SHA256` (of the whole value) among the error headers. A longer key is always cut (no
    device id is one): the producer hashes a dead letter's key to choose its partition, in Python, 90 ms
    a MiB on the worker's event loop (2026-12-07), so a device's records with megabyte keys would have
    stalled every partition of the worker.

    ``cut_from`` (size, SHA-256 hex) says ``value`` is itself a piece of something else (what the
    consumer's reader would not hand out whole: ``pipeline/kafkarecords.py``): the copy is then always
    marked truncated, with that size and hash, so that it is never replayed as a record.
    """
    if (
        cut_from is None
        and record_size(key, value, headers) <= limit_bytes
        and (key is None or len(key) <= MAX_KEPT_KEY_BYTES)
    ):
        return key, value, list(headers)
    own = [(k, v) for k, v in headers if not k.startswith(ERRORS_PREFIX)]
    errors = [(k, v) for k, v in headers if k.startswith(ERRORS_PREFIX)]
    cut: list[str] = []
    if key is not None and len(key) > MAX_KEPT_KEY_BYTES:
        cut.append("key")
        key = key[:MAX_KEPT_KEY_BYTES]
    size, digest = cut_from if cut_from is not None else (len(value), hashlib.sha256(value).hexdigest())
    errors += [(ORIGINAL_SIZE, str(size).encode()), (ORIGINAL_SHA256, digest.encode())]
    marks = (TRUNCATED, ",".join(TRUNCATED_PARTS).encode())  # the longest the mark can be
    if (
        headers_size(own) > MAX_KEPT_ORIGIN_HEADERS_BYTES
        or record_size(key, b"", [*own, *errors, marks]) > limit_bytes  # a small limit
    ):
        cut.append("headers")
        own = []
    room = max(0, limit_bytes - record_size(key, b"", [*own, *errors, marks]))
    prefix = value[: min(DEAD_LETTER_PREFIX_BYTES, room)]
    if len(prefix) < len(value) or cut_from is not None:
        cut.insert(0, "value")
    return key, prefix, [*own, *errors, (TRUNCATED, ",".join(cut).encode())]


def attempt_of(headers: Iterable[tuple[str, bytes | None]]) -> int:
    """Delivery attempt of an ingest record: its `DELIVERY_ATTEMPT` header, 1 when absent.

    Devices control their headers, so an unreadable or non-positive value counts as 1 rather than fail.
    """
    value = dict(headers).get(DELIVERY_ATTEMPT)
    if value is None:
        return 1
    text = value.decode("ascii", errors="replace")
    return max(1, int(text)) if _INT_RE.fullmatch(text) else 1


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead letter read back from a DLQ topic."""

    dlq_topic: str
    """The DLQ topic it was read from."""
    dlq_partition: int
    """Its partition on the DLQ topic."""
    dlq_offset: int
    """Its offset on the DLQ topic."""
    reason: str
    """Reason code of the error."""
    stage: Stage
    """Where the record failed."""
    origin_topic: str
    """Topic the failed record was consumed from."""
    origin_partition: int
    """Its partition there."""
    origin_offset: int
    """Its offset there."""
    origin_timestamp_ms: int
    """Its Kafka timestamp, unix ms."""
    group_id: str
    """Consumer group that consumed it."""
    worker_id: str
    """Node id of the worker that dead-lettered it."""
    exception_class: str
    """Qualified class name of the error."""
    message: str
    """The error's message, at most `MAX_MESSAGE_CHARS`, no payload."""
    key_id: int | None
    """Master key id the envelope names, when it was decoded."""
    attempt: int
    """Which delivery of the record failed (1: the device's own)."""
    dead_lettered_at_ms: int
    """When it was dead-lettered, unix ms."""
    key: bytes | None
    """The failed record's key (the device id), as received."""
    value: bytes
    """The failed record's value exactly as received, still sealed."""
    origin_headers: tuple[tuple[str, bytes], ...] = field(default=())
    """The failed record's own headers (every header outside ``edgestream.errors.``)."""
    truncated: tuple[str, ...] = ()
    """What the worker cut to make it fit (`TRUNCATED`); empty for a whole copy."""
    original_size: int | None = None
    """Length of the record's value as received, when truncated."""
    original_sha256: str | None = None
    """SHA-256 (hex) of the record's value as received, when truncated."""

    @property
    def replayable(self) -> bool:
        """Whether it holds the record as received: a truncated copy can never be replayed."""
        return not self.truncated

    @classmethod
    def from_record(cls, record: KafkaRecord) -> DeadLetter:
        """Parse a record read from a DLQ topic; `MalformedDeadLetter` names every missing or bad header.

        When a header repeats, the last one counts (as Kafka's ``Headers.lastHeader``).
        """
        errors_headers: dict[str, bytes] = {}
        origin: list[tuple[str, bytes]] = []
        for name, raw in record.headers:
            if raw is None:
                continue
            if name.startswith(ERRORS_PREFIX):
                errors_headers[name] = raw
            else:
                origin.append((name, raw))
        parser = _HeaderParser(errors_headers)
        letter: dict[str, Any] = {
            "reason": parser.text(REASON),
            "stage": parser.stage(STAGE),
            "origin_topic": parser.topic(ORIGIN_TOPIC),
            "origin_partition": parser.integer(ORIGIN_PARTITION, minimum=0),
            "origin_offset": parser.integer(ORIGIN_OFFSET, minimum=0),
            "origin_timestamp_ms": parser.integer(ORIGIN_TIMESTAMP_MS, minimum=-1),
            "group_id": parser.text(GROUP_ID),
            "worker_id": parser.text(WORKER_ID),
            "exception_class": parser.text(EXCEPTION_CLASS),
            "message": parser.text(EXCEPTION_MESSAGE, allow_empty=True),
            "key_id": parser.integer(KEY_ID, minimum=0, optional=True),
            "attempt": parser.integer(ATTEMPT, minimum=1),
            "dead_lettered_at_ms": parser.integer(DEAD_LETTERED_AT_MS, minimum=0),
            **parser.truncation(),
        }
        if record.value is None:
            parser.problems.append("the record has no value")
        if parser.problems:
            raise MalformedDeadLetter(record.topic, record.partition, record.offset, parser.problems)
        return cls(
            dlq_topic=record.topic,
            dlq_partition=record.partition,
            dlq_offset=record.offset,
            key=record.key,
            value=record.value if record.value is not None else b"",
            origin_headers=tuple(origin),
            **letter,
        )

    def dlq_position(self) -> str:
        """``<dlq topic>[<partition>]@<offset>``: the value of `REPLAYED_FROM` on its replay."""
        return position(self.dlq_topic, self.dlq_partition, self.dlq_offset)

    def origin_position(self) -> str:
        """``<origin topic>[<partition>]@<offset>``."""
        return position(self.origin_topic, self.origin_partition, self.origin_offset)

    def replay_headers(self) -> list[tuple[str, bytes]]:
        """Headers of its replay: its own headers (earlier replay marks replaced) and new replay marks."""
        kept = [(k, v) for k, v in self.origin_headers if k not in (REPLAYED_FROM, DELIVERY_ATTEMPT)]
        return [
            *kept,
            (REPLAYED_FROM, self.dlq_position().encode()),
            (DELIVERY_ATTEMPT, str(self.attempt + 1).encode()),
        ]


class _HeaderParser:
    """Reads typed values out of error headers, collecting every problem instead of stopping at one."""

    def __init__(self, headers: dict[str, bytes]) -> None:
        self._headers = headers
        self.problems: list[str] = []

    def _raw_text(self, name: str, *, optional: bool = False) -> str | None:
        raw = self._headers.get(name)
        if raw is None:
            if not optional:
                self.problems.append(f"missing header {name}")
            return None
        try:
            return raw.decode()
        except UnicodeDecodeError:
            self.problems.append(f"header {name} is not UTF-8")
            return None

    def text(self, name: str, *, allow_empty: bool = False) -> str:
        value = self._raw_text(name)
        if value is None:
            return ""
        if not value and not allow_empty:
            self.problems.append(f"header {name} is empty")
        return value

    def topic(self, name: str) -> str:
        """A Kafka topic name (at most 249 of ``[a-zA-Z0-9._-]``): a backend keeps origins in memory to
        drop duplicates, so a header of any length would have been kept whole."""
        value = self.text(name)
        if value and (_TOPIC_RE.fullmatch(value) is None or value in (".", "..")):
            self.problems.append(f"header {name} is {value[:40]!r}, not a Kafka topic name")
        return value

    def stage(self, name: str) -> Stage | None:
        value = self._raw_text(name)
        if value is None:
            return None
        stage = _STAGES.get(value)
        if stage is None:
            self.problems.append(f"header {name} is {value[:40]!r}, not one of {', '.join(_STAGES)}")
        return stage

    def truncation(self) -> dict[str, Any]:
        """`TRUNCATED` and, when it is present, `ORIGINAL_SIZE` and `ORIGINAL_SHA256`."""
        marks = self._raw_text(TRUNCATED, optional=True)
        if marks is None:
            return {}
        parts = tuple(marks.split(","))
        if not set(parts) <= set(TRUNCATED_PARTS):
            self.problems.append(f"header {TRUNCATED} is {marks[:40]!r}, not parts of {TRUNCATED_PARTS}")
        digest = self._raw_text(ORIGINAL_SHA256)
        if digest is not None and _SHA256_RE.fullmatch(digest) is None:
            self.problems.append(f"header {ORIGINAL_SHA256} is not a lowercase hex SHA-256")
        return {
            "truncated": parts,
            "original_size": self.integer(ORIGINAL_SIZE, minimum=0),
            "original_sha256": digest,
        }

    def integer(self, name: str, *, minimum: int, optional: bool = False) -> int | None:
        value = self._raw_text(name, optional=optional)
        if value is None:
            return None
        if _INT_RE.fullmatch(value) is None or int(value) < minimum:
            self.problems.append(f"header {name} is {value[:40]!r}, not an integer >= {minimum}")
            return None
        return int(value)
