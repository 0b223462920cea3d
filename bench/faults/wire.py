"""Byte-level edits of sealed envelopes: bit flips, msgpack maps rewritten or with a key twice, zstd bombs;
and Kafka record batches no aiokafka producer would send (header keys that are not UTF-8), produced as
they are: what a client that writes the Kafka protocol itself can put on a topic."""

from __future__ import annotations

import functools
import random
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
import zstandard
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.util import calc_crc32c


def flip_bit(data: bytes, rng: random.Random) -> bytes:
    """``data`` with one bit flipped at random."""
    out = bytearray(data)
    i = rng.randrange(len(out))
    out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def envelope_fields(value: bytes) -> dict[str, Any]:
    """The msgpack map of an encoded envelope, as it stands."""
    fields: dict[str, Any] = msgpack.unpackb(value, raw=False)
    return fields


def pack_fields(fields: Mapping[str, object]) -> bytes:
    """A msgpack map of ``fields`` (as an envelope encodes them)."""
    return msgpack.packb(dict(fields), use_bin_type=True)


def pack_with_duplicate(fields: Mapping[str, object], duplicate: str) -> bytes:
    """A msgpack map whose header counts ``duplicate`` twice (Python's msgpack keeps the last one)."""
    entries = [*fields.items(), (duplicate, fields[duplicate])]
    n = len(entries)
    header = bytes([0x80 | n]) if n < 16 else b"\xde" + n.to_bytes(2, "big")
    return header + b"".join(msgpack.packb(k) + msgpack.packb(v, use_bin_type=True) for k, v in entries)


@functools.cache
def zstd_bombs(size_bytes: int) -> tuple[bytes, bytes]:
    """Two zstd frames of ``size_bytes`` zeros (a few hundred bytes each): one declares its content
    size, the other does not (the edge must stop decompressing it as it passes the cap)."""
    zeros = b"\x00" * size_bytes
    declared: bytes = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(zeros)
    stream = zstandard.ZstdCompressor(level=3, write_content_size=False).compressobj()
    streamed: bytes = stream.compress(zeros) + stream.flush()
    return declared, streamed


# -- raw record batches -------------------------------------------------------------------------------

_CRC_AT = 17
"""Offset of a v2 batch's CRC; it covers the bytes from 21 on."""
_FILL = 0x7F
"""The byte that stands for a raw header key while aiokafka builds the batch."""

Raw = tuple[bytes | None, bytes, Sequence[tuple[bytes, bytes]]]
"""A record: key, value and headers whose keys are raw bytes (any bytes, UTF-8 or not)."""


def batch(records: Sequence[Raw]) -> bytes:
    """An uncompressed v2 batch of ``records``, its CRC valid: built by aiokafka with a stand-in of the
    same length for each header key, which is then replaced by the key's own bytes."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    pairs: list[tuple[bytes, bytes]] = []
    for offset, (key, value, headers) in enumerate(records):
        if any(len(name) >= 64 or len(v) >= 64 for name, v in headers):
            raise ValueError("header keys and values of fewer than 64 bytes only")
        stand_ins = [(chr(_FILL) * len(name), header_value) for name, header_value in headers]
        pairs += headers
        builder.append(offset, timestamp=None, key=key, value=value, headers=stand_ins)
    buf = bytearray(builder.build())
    at = 61  # the batch header's length: records start here
    for name, header_value in pairs:
        # The header as the builder wrote it: length (a one-byte zigzag varint below 64), stand-in, the
        # value's length and the value; a stand-in byte alone may also be some varint's byte.
        written = bytes([2 * len(name)]) + bytes([_FILL]) * len(name) + bytes([2 * len(header_value)])
        at = buf.index(written + header_value, at) + 1
        buf[at : at + len(name)] = name
        at += len(name)
    struct.pack_into(">I", buf, _CRC_AT, calc_crc32c(bytes(buf[21:])))
    return bytes(buf)


async def produce_raw(producer: AIOKafkaProducer, tp: TopicPartition, raw_batch: bytes) -> int:
    """Produce ``raw_batch`` to ``tp`` through ``producer``'s connection (acks=all); its base offset."""
    await producer.partitions_for(tp.topic)
    node = producer.client.cluster.leader_for_partition(tp)
    request = ProduceRequest(None, -1, 30_000, [(tp.topic, [(tp.partition, raw_batch)])])
    response = await producer.client.send(node, request)
    [(_, [(_, error, offset, *_)])] = response.topics
    if error:
        raise RuntimeError(f"the broker refused the batch: error {error}")
    return int(offset)
