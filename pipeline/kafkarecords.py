"""Fetched record batches read as Kafka's own client reads them: a header key that is not UTF-8 is read
with replacement characters, not refused.

A record header's key is a length and bytes on the wire; the broker stores what a producer sent
without decoding it (its validation reads keys as Kafka's Java client does, ``new String(bytes,
UTF_8)``: anything not UTF-8 becomes U+FFFD). aiokafka decodes each key as strict UTF-8 while it
iterates a fetched batch, in its C reader and its Python one, so one record whose key is not UTF-8 made
every fetch of its partition raise out of ``getmany`` before any record of it was returned: a device
that may write to its region's ingest topics stopped the region's worker, at every restart, from the
committed offset on (measured on the real broker; ``tests/pipeline/test_kafkarecords.py``).

`install` puts `LenientMemoryRecords` where aiokafka's fetcher builds the records of each fetched
partition. A batch is read by aiokafka's own reader as before; only a batch that raises
``UnicodeDecodeError`` is read again by `LenientBatch` (aiokafka's pure-Python batch, whose record
reader here decodes header keys as Java does), from the record it stopped at. Valid records come out
exactly as before; a record with such a key comes out with U+FFFD in its key, for the consumer to
decide about (the worker answers it or dead-letters it like any other record, by its value).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterator
from typing import Any, Final

from aiokafka.consumer import fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import _DefaultRecordBatchPy, _DefaultRecordPy
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import decode_varint

log = logging.getLogger(__name__)

_LENGTH: Final = struct.Struct(">i")
"""A batch's length field, after its base offset."""
_BATCH_HEADER: Final = 12
"""Bytes before a batch's length field ends: base offset (int64) and length (int32), in every format."""


class LenientBatch(_DefaultRecordBatchPy):  # type: ignore[misc]  # aiokafka's, untyped for mypy
    """A v2 record batch whose records' header keys are decoded with replacement (Kafka's Java way)."""

    def _read_msg(
        self, decode_varint: Callable[[bytearray, int], tuple[int, int]] = decode_varint
    ) -> _DefaultRecordPy:
        buffer: Any = self._buffer
        pos: int = self._pos  # type: ignore[has-type]
        length, pos = decode_varint(buffer, pos)
        end = pos + length
        _, pos = decode_varint(buffer, pos)  # record attributes: unused by the format so far
        timestamp_delta, pos = decode_varint(buffer, pos)
        offset_delta, pos = decode_varint(buffer, pos)
        key, pos = _nullable_bytes(buffer, pos)
        value, pos = _nullable_bytes(buffer, pos)
        count, pos = decode_varint(buffer, pos)
        if count < 0:
            raise CorruptRecordException(f"a record with {count} headers")
        headers: list[tuple[str, bytes | None]] = []
        for _ in range(count):
            name, pos = _nullable_bytes(buffer, pos)
            if name is None:
                raise CorruptRecordException("a record header without a key")
            header_value, pos = _nullable_bytes(buffer, pos)
            headers.append((name.decode("utf-8", "replace"), header_value))
        if pos != end:
            raise CorruptRecordException(f"a record of {length} bytes read as {pos - end + length}")
        self._pos = pos
        if self.timestamp_type == self.LOG_APPEND_TIME:
            timestamp = self.max_timestamp
        else:
            timestamp = self.first_timestamp + timestamp_delta
        return _DefaultRecordPy(
            self.base_offset + offset_delta, timestamp, self.timestamp_type, key, value, headers
        )


def _nullable_bytes(buffer: Any, pos: int) -> tuple[bytes | None, int]:
    """A varint length (-1: null) and that many bytes, from ``pos``."""
    length, pos = decode_varint(buffer, pos)
    if length < 0:
        return None, pos
    if pos + length > len(buffer):
        raise CorruptRecordException(f"{length} bytes announced, {len(buffer) - pos} left")
    return bytes(buffer[pos : pos + length]), pos + length


class _Batch:
    """One batch of aiokafka's reader, read again by `LenientBatch` if its reader refuses a header key.

    The header fields aiokafka's fetcher reads of every batch are copied once (they do not change
    while the batch is read); anything else goes to the inner batch through ``__getattr__``. Read
    through ``__getattr__``, those fields made a fetched batch of three records cost 6.5-10.7 us
    against aiokafka's own 0.8-1.3 us; copied, 2.0-3.3 us (2026-12-06, alternating runs).
    """

    __slots__ = (
        "_inner",
        "_raw",
        "base_offset",
        "is_control_batch",
        "is_transactional",
        "next_offset",
        "producer_id",
    )

    def __init__(self, inner: Any, raw: Any, start: int, end: int) -> None:
        self._inner = inner
        self._raw = (raw, start, end)  # the fetch response's bytes, where the batch lies in them
        # A batch of the old formats (magic 0 and 1) has no base offset; aiokafka reads it only of
        # batches with a producer id, which those have not either.
        self.base_offset: int | None = getattr(inner, "base_offset", None)
        self.next_offset: int = inner.next_offset
        self.producer_id: int | None = inner.producer_id
        self.is_control_batch: bool = inner.is_control_batch
        self.is_transactional: bool = inner.is_transactional

    def validate_crc(self) -> bool:
        return bool(self._inner.validate_crc())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __next__(self) -> Any:  # aiokafka reads a control batch's marker with next()
        return next(self._inner)

    def __iter__(self) -> Iterator[Any]:
        read = 0
        try:
            for record in self._inner:
                yield record
                read += 1
        except (UnicodeDecodeError, CorruptRecordException) as err:
            if not _a_header_key(err):
                raise
        else:
            return
        raw, start, end = self._raw
        lenient = LenientBatch(bytes(raw[start:end]))
        _note_lenient(lenient.base_offset, read)
        for index, record in enumerate(lenient):
            if index >= read:
                yield record


def _a_header_key(err: BaseException) -> bool:
    """Whether ``err`` is aiokafka refusing a key that is not UTF-8 (its C reader raises the decode
    error, its Python reader wraps it)."""
    return isinstance(err, UnicodeDecodeError) or isinstance(err.__cause__, UnicodeDecodeError)


_lenient_batches = 0


def _note_lenient(base_offset: int, read: int) -> None:
    global _lenient_batches
    _lenient_batches += 1
    if _lenient_batches == 1 or _lenient_batches % 1000 == 0:
        log.warning(
            "%d fetched batches held a record header key that is not UTF-8, read with U+FFFD "
            "(latest: the batch at offset %d, from its record %d)",
            _lenient_batches,
            base_offset,
            read,
        )


class LenientMemoryRecords:
    """aiokafka's ``MemoryRecords`` over one partition's fetched bytes, each batch a `_Batch`."""

    __slots__ = ("_inner", "_pos", "_raw")

    def __init__(self, raw: Any) -> None:
        self._inner = MemoryRecords(raw)
        self._raw = raw
        self._pos = 0

    def size_in_bytes(self) -> int:
        return int(self._inner.size_in_bytes())

    def has_next(self) -> bool:
        return bool(self._inner.has_next())

    def next_batch(self) -> _Batch | None:
        batch = self._inner.next_batch()
        if batch is None:
            return None
        start = self._pos
        (length,) = _LENGTH.unpack_from(self._raw, start + 8)
        self._pos = start + _BATCH_HEADER + length
        return _Batch(batch, self._raw, start, self._pos)


def install() -> None:
    """Make every aiokafka consumer of this process read fetched batches through `LenientMemoryRecords`
    (idempotent). Raises ``RuntimeError`` if aiokafka's fetcher no longer builds records where this
    expects to: a changed aiokafka must not silently go back to stopping at such a record."""
    current = getattr(fetcher, "MemoryRecords", None)
    if current is LenientMemoryRecords:
        return
    if current is not MemoryRecords:
        raise RuntimeError("aiokafka's fetcher does not build MemoryRecords as edgestream expects")
    fetcher.MemoryRecords = LenientMemoryRecords
