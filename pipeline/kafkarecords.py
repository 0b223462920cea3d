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

A compressed batch is bounded on the wire by the broker's ``max.message.bytes``, not once inflated,
and aiokafka inflates a whole batch at once: zeros compress 1,000:1 with gzip and about 30,000:1 with
zstd, so one device's batch of a few KiB could hold gigabytes of record values (measured in process:
256 MiB from an 8,692-byte zstd batch), and the worker would fail for memory at every restart, from
the committed offset on. So a compressed batch is inflated here first, in pieces, up to
`MAX_INFLATED_BATCH_BYTES` (`inflated_size`): one that would inflate past it is not read; in its place
comes one record at its last offset, marked `REFUSED` (value: the first `KEPT_BATCH_BYTES` of the batch
as it came, sealed envelopes and all), for the consumer to refuse (the worker dead-letters it as
``oversized``: ``docs/contract.md``, section 9). In a compressed batch that fits, a record value larger
than `MAX_RECORD_VALUE_BYTES` (more than any producer may send uncompressed) is cut to its first
`KEPT_BATCH_BYTES` and marked the same way, so that no record a consumer holds is larger than an
uncompressed batch could carry. Uncompressed batches, the worker's whole traffic, are not looked at.
"""

from __future__ import annotations

import hashlib
import logging
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import Any, Final

import zstandard
from aiokafka.consumer import fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import _DefaultRecordBatchPy, _DefaultRecordPy
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import decode_varint

from edgestream.pipeline.contract.limits import BROKER_MESSAGE_MAX_BYTES, DEAD_LETTER_PREFIX_BYTES

log = logging.getLogger(__name__)

MAX_INFLATED_BATCH_BYTES: Final = 16 * BROKER_MESSAGE_MAX_BYTES
"""Most bytes a compressed batch may inflate to and still be read (16 MiB: a batch of sealed envelopes,
which do not compress, inflates to about its size on the wire; a backend's labels to a few times it)."""
MAX_RECORD_VALUE_BYTES: Final = BROKER_MESSAGE_MAX_BYTES
"""Most bytes of a record value read from a compressed batch; a longer one is cut and marked `REFUSED`
(uncompressed, no batch can carry a longer one)."""
KEPT_BATCH_BYTES: Final = DEAD_LETTER_PREFIX_BYTES
"""What a refused batch's record, or a cut value, keeps."""
REFUSED: Final = "edgestream.fetch.refused"
"""The header (first of its record's) that says why this reader did not hand the record out whole."""
REFUSED_ORIGINAL: Final = "edgestream.fetch.refused.original"
"""The header (second) with ``<size> <sha256 hex>`` of what a `REFUSED` record's value was cut from (the
batch as it came, or the whole value): its dead letter says so, and is never replayed as a record."""
_ORIGINAL_RE: Final = re.compile(rb"([0-9]{1,19}) ([0-9a-f]{64})")
_INFLATE_PIECE: Final = 1 << 20
_LEAST_CHARGED: Final = 4096
"""Bytes a snappy or lz4 block (and an lz4 frame) counts for at least, whatever it states: Kafka's
clients fill their blocks (32 and 64 KiB) but the last, so a batch of thousands of tiny ones is no
client's. Counted at their own sizes, a 1 MiB batch of 1-byte blocks walked 200,000 headers in Python
(55-100 ms of the worker's loop, 2026-12-07); so the walk ends within 4,096 of them."""
"""Bytes inflated at a time while measuring (`inflated_size`)."""
_V2_HEADER: Final = 61
"""A v2 batch's bytes before its records."""
_ATTRIBUTES: Final = struct.Struct(">h")
_BASE_TIMESTAMP: Final = struct.Struct(">q")
_CODEC_MASK: Final = 0x07
GZIP, SNAPPY, LZ4, ZSTD = 1, 2, 3, 4
_XERIAL: Final = b"\x82SNAPPY\x00"
_LZ4_MAGIC: Final = 0x184D2204
_LZ4_BLOCK_MAX: Final = {4: 64 << 10, 5: 256 << 10, 6: 1 << 20, 7: 4 << 20}

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
        raw, start, _ = self._raw
        codec = _ATTRIBUTES.unpack_from(raw, start + 21)[0] & _CODEC_MASK if raw[start + 16] == 2 else 0
        if codec:
            yield from self._compressed(codec)
            return
        yield from self._records()

    def _compressed(self, codec: int) -> Iterator[Any]:
        """A compressed batch's records, if it inflates within `MAX_INFLATED_BATCH_BYTES` (each value cut
        to `MAX_RECORD_VALUE_BYTES`); else one `REFUSED` record in its place."""
        raw, start, end = self._raw
        try:
            size = inflated_size(codec, memoryview(raw)[start + _V2_HEADER : end], MAX_INFLATED_BATCH_BYTES)
            why = (
                None
                if size <= MAX_INFLATED_BATCH_BYTES
                else f"inflates past {MAX_INFLATED_BATCH_BYTES} bytes"
            )
        except Exception as err:  # not what its codec reads: aiokafka would raise at every fetch
            why = f"does not inflate ({type(err).__name__})"
        if why is None:
            read = 0
            try:
                for record in self._records():
                    value = record.value
                    if value is not None and len(value) > MAX_RECORD_VALUE_BYTES:
                        record = _refused(
                            record.offset,
                            record.timestamp,
                            value,
                            [*record.headers],
                            f"a value of {len(value)} bytes from a compressed batch, over "
                            f"{MAX_RECORD_VALUE_BYTES}; its first {KEPT_BATCH_BYTES} kept",
                        )
                    yield record
                    read += 1
                return
            except Exception as err:  # its codec's data or a record is not readable: never raised
                why = f"could not be read past its record {read} ({type(err).__name__})"
        last = self.next_offset - 1
        base = self.base_offset if self.base_offset is not None else last
        timestamp = _BASE_TIMESTAMP.unpack_from(raw, start + 27)[0]
        _note_refused(base, last, why)
        yield _refused(
            last,
            timestamp,
            raw[start:end],
            [],
            f"a compressed batch of offsets {base}-{last} ({end - start} bytes) {why}: not read, its first "
            f"{min(end - start, KEPT_BATCH_BYTES)} bytes kept",
        )

    def _records(self) -> Iterator[Any]:
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


def _refused(
    offset: int, timestamp: int, whole: Any, headers: list[tuple[str, bytes | None]], why: str
) -> _DefaultRecordPy:
    """A record handed out in place of ``whole`` (bytes-like), which this reader would not hand out:
    its first `KEPT_BATCH_BYTES`, with `REFUSED` and `REFUSED_ORIGINAL` first among its headers."""
    original = f"{len(whole)} {hashlib.sha256(whole).hexdigest()}".encode()
    value = bytes(whole[:KEPT_BATCH_BYTES])
    return _DefaultRecordPy(
        offset, timestamp, 0, None, value, [(REFUSED, why.encode()), (REFUSED_ORIGINAL, original), *headers]
    )


def refused(headers: tuple[tuple[str, bytes | None], ...] | list[tuple[str, bytes | None]]) -> str | None:
    """Why this reader did not hand out a record whole (its `REFUSED` header), or None."""
    if headers and headers[0][0] == REFUSED:
        value = headers[0][1]
        return (value or b"").decode("utf-8", "replace")
    return None


def refused_original(
    headers: tuple[tuple[str, bytes | None], ...] | list[tuple[str, bytes | None]],
) -> tuple[int, str] | None:
    """Size and SHA-256 (hex) of what a `REFUSED` record's value was cut from, or None for a record this
    reader handed out whole."""
    if len(headers) < 2 or headers[0][0] != REFUSED or headers[1][0] != REFUSED_ORIGINAL:
        return None
    # A producer may write these headers itself: anything but this reader's exact form is not a mark.
    found = _ORIGINAL_RE.fullmatch(headers[1][1] or b"")
    return None if found is None else (int(found[1]), found[2].decode())


def inflated_size(codec: int, data: memoryview, limit: int) -> int:
    """The bytes ``data`` (a batch's records, compressed with Kafka's ``codec``) inflates to, counted up
    to just past ``limit`` (a value above ``limit`` means "more"): inflated in pieces of at most
    `_INFLATE_PIECE`, never whole. snappy (xerial framing, as Kafka writes it) and lz4 (frames) are
    bounded from their block headers without inflating. Raises on data its codec does not read."""
    if codec == GZIP:
        inflater = zlib.decompressobj(47)  # a gzip or zlib header, as Kafka's clients write it
        size, pending = 0, bytes(data)
        while pending and size <= limit:
            size += len(inflater.decompress(pending, _INFLATE_PIECE))
            pending = inflater.unconsumed_tail
            if inflater.eof and inflater.unused_data:  # the next member: aiokafka reads them all
                pending = inflater.unused_data
                inflater = zlib.decompressobj(47)
        return size
    if codec == ZSTD:
        reader = zstandard.ZstdDecompressor().stream_reader(bytes(data), read_across_frames=True)
        size = 0
        while size <= limit and (piece := reader.read(_INFLATE_PIECE)):
            size += len(piece)
        return size
    if codec == SNAPPY:
        return _snappy_size(bytes(data), limit)
    if codec == LZ4:
        return _lz4_bound(bytes(data), limit)
    raise ValueError(f"unknown compression codec {codec}")


def _snappy_size(data: bytes, limit: int) -> int:
    """The inflated size of Kafka's snappy data: xerial frames (magic, version, compat, then blocks of
    a big-endian length and a raw snappy block), or one raw block; each raw block states its size."""
    if not data.startswith(_XERIAL):
        return _stated_size(data, 0)
    size, pos = 0, 16
    while pos < len(data) and size <= limit:
        (length,) = _LENGTH.unpack_from(data, pos)
        if length < 0 or pos + 4 + length > len(data):
            raise ValueError("a snappy block past the batch's end")
        size += max(_stated_size(data, pos + 4), _LEAST_CHARGED)
        pos += 4 + length
    return size


def _stated_size(data: bytes, pos: int) -> int:
    """A raw snappy block's stated size: a little-endian base-128 varint."""
    value, shift = 0, 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value
        pos, shift = pos + 1, shift + 7
        if shift > 35:
            raise ValueError("a snappy size longer than 5 bytes")


def _lz4_bound(data: bytes, limit: int) -> int:
    """An upper bound of what LZ4 frames inflate to: per block its frame's block size, from the block
    headers (an uncompressed block: its own size), each block and frame at least `_LEAST_CHARGED`."""
    size, pos = 0, 0
    while pos < len(data) and size <= limit:
        size += _LEAST_CHARGED
        magic, flags, descriptor = struct.unpack_from("<IBB", data, pos)
        if magic != _LZ4_MAGIC:
            raise ValueError("not an LZ4 frame")
        block_max = _LZ4_BLOCK_MAX.get((descriptor >> 4) & 0x07)
        if block_max is None:
            raise ValueError("an LZ4 frame with an unknown block size")
        pos += 6 + (8 if flags & 0x08 else 0) + (4 if flags & 0x01 else 0) + 1  # +content size, dict id, HC
        while True:
            (block,) = struct.unpack_from("<I", data, pos)
            pos += 4
            if block == 0:  # the end mark
                break
            if size > limit:
                return size
            length = block & 0x7FFFFFFF
            size += max(length, _LEAST_CHARGED) if block & 0x80000000 else block_max
            pos += length + (4 if flags & 0x10 else 0)  # a block checksum
            if pos > len(data):
                raise ValueError("an LZ4 block past the batch's end")
        pos += 4 if flags & 0x04 else 0  # the content checksum
    return size


def _a_header_key(err: BaseException) -> bool:
    """Whether ``err`` is aiokafka refusing a key that is not UTF-8 (its C reader raises the decode
    error, its Python reader wraps it)."""
    return isinstance(err, UnicodeDecodeError) or isinstance(err.__cause__, UnicodeDecodeError)


_lenient_batches = 0
_refused_batches = 0


def _note_refused(base_offset: int, last_offset: int, why: str) -> None:
    global _refused_batches
    _refused_batches += 1
    if _refused_batches == 1 or _refused_batches % 100 == 0:
        log.warning(
            "%d compressed batches were not read (latest: offsets %d-%d, which %s)",
            _refused_batches,
            base_offset,
            last_offset,
            why,
        )


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
