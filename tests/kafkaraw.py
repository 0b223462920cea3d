"""Records no aiokafka producer would send, built as bytes and produced as they are: what a hostile
client that speaks the Kafka protocol itself can put on a topic."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.util import calc_crc32c

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
