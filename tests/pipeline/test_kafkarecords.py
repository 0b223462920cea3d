"""Fetched batches whose record header keys are not UTF-8: read as Kafka's Java client reads them
(U+FFFD), where aiokafka's own readers refused the whole fetch of the partition."""

from __future__ import annotations

import hashlib
import struct
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.consumer import fetcher
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.legacy_records import LegacyRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c

from bench.faults import wire
from edgestream.pipeline import kafka, kafkarecords
from edgestream.pipeline.settings import KafkaSettings

RECORDS: list[wire.Raw] = [
    (b"dev-1", b"first", [(b"trace", b"t1")]),
    (b"dev-1", b"second", [(b"ok", b"1"), (b"\xff\xfe", b"2"), (b"\xc3(", b"3")]),
    (None, b"third", [(b"after", b"a")]),
]
KEYS_READ = [["trace"], ["ok", "\ufffd\ufffd", "\ufffd("], ["after"]]


def _read(records: object) -> list[tuple[int, bytes | None, bytes, list[tuple[str, bytes]]]]:
    out = []
    while records.has_next():  # type: ignore[attr-defined]
        for r in records.next_batch():  # type: ignore[attr-defined]
            out.append((r.offset, r.key, r.value, list(r.headers)))
    return out


def test_aiokafkas_reader_refuses_the_batch_and_the_lenient_one_reads_every_record() -> None:
    raw = wire.batch(RECORDS)
    with pytest.raises(UnicodeDecodeError):
        _read(MemoryRecords(raw))
    read = _read(kafkarecords.LenientMemoryRecords(raw))
    assert [(o, k, v) for o, k, v, _ in read] == [(i, k, v) for i, (k, v, _) in enumerate(RECORDS)]
    assert [[name for name, _ in headers] for *_, headers in read] == KEYS_READ
    assert [[value for _, value in headers] for *_, headers in read] == [
        [v for _, v in headers] for *_, headers in RECORDS
    ]


def test_valid_batches_read_as_aiokafka_reads_them() -> None:
    good = [(b"k", b"v", [(b"a", b"1")]), (None, b"", []), (b"", b"x" * 300, [(b"b", b"")])]
    raw = wire.batch(good) + wire.batch(good[::-1])
    assert _read(kafkarecords.LenientMemoryRecords(raw)) == _read(MemoryRecords(raw))
    assert kafkarecords.LenientMemoryRecords(raw).size_in_bytes() == len(raw)


def test_a_refused_batch_after_others_is_read_from_its_own_bytes() -> None:
    good = [(b"k", b"v", [(b"a", b"1")])]
    raw = wire.batch(good) + wire.batch(RECORDS) + wire.batch(good)
    read = _read(kafkarecords.LenientMemoryRecords(raw))
    assert [v for _, _, v, _ in read] == [b"v", b"first", b"second", b"third", b"v"]
    assert [[name for name, _ in headers] for *_, headers in read] == [["a"], *KEYS_READ, ["a"]]


def _transactional(producer_id: int, base_offset: int, n: int) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=1,
        producer_id=producer_id,
        producer_epoch=3,
        base_sequence=0,
        batch_size=1 << 20,
    )
    for i in range(n):
        builder.append(i, timestamp=None, key=b"k", value=b"v", headers=[])
    buf = bytearray(builder.build())
    buf[0:8] = base_offset.to_bytes(8, "big")  # where the broker put it (outside the CRC's span)
    return bytes(buf)


def test_the_header_fields_the_fetcher_reads_are_the_batchs_own() -> None:
    raw = wire.batch([(b"k", b"v", [])]) + _transactional(41, 1, 3) + _transactional(42, 4, 2)
    ours, theirs = kafkarecords.LenientMemoryRecords(raw), MemoryRecords(raw)
    fields = ("base_offset", "next_offset", "producer_id", "is_control_batch", "is_transactional")
    seen = []
    while theirs.has_next():
        mine, expected = ours.next_batch(), theirs.next_batch()
        assert mine is not None
        assert [getattr(mine, f) for f in fields] == [getattr(expected, f) for f in fields]
        assert mine.validate_crc()
        assert mine.producer_epoch == expected.producer_epoch  # any other field: the inner batch's
        seen.append((mine.base_offset, mine.next_offset, mine.producer_id, mine.is_transactional))
    assert not ours.has_next()
    assert seen == [(0, 1, -1, False), (1, 4, 41, True), (4, 6, 42, True)]


def test_batches_of_the_old_formats_read_as_aiokafka_reads_them() -> None:
    raw = b""
    for magic in (0, 1):
        builder = LegacyRecordBatchBuilder(magic=magic, compression_type=0, batch_size=1 << 20)
        builder.append(0, timestamp=None if magic == 0 else 1_700_000_000_000, key=b"k", value=b"v")
        raw += bytes(builder.build())
    assert _read(kafkarecords.LenientMemoryRecords(raw)) == _read(MemoryRecords(raw))
    batch = kafkarecords.LenientMemoryRecords(raw).next_batch()
    assert batch is not None
    assert (batch.producer_id, batch.is_transactional, batch.is_control_batch) == (None, False, False)
    assert batch.next_offset == 1


def test_install_is_idempotent_and_refuses_an_aiokafka_it_does_not_know(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kafkarecords.install()
    kafkarecords.install()
    assert fetcher.MemoryRecords is kafkarecords.LenientMemoryRecords
    monkeypatch.setattr(fetcher, "MemoryRecords", object)
    with pytest.raises(RuntimeError, match="does not build MemoryRecords"):
        kafkarecords.install()


@pytest.mark.broker
async def test_a_consumer_reads_past_such_a_record_on_the_real_broker(bootstrap: KafkaSettings) -> None:
    """The broker stores the batch as sent; aiokafka's consumer then raised UnicodeDecodeError out of
    every getmany, at the same position (measured before ``kafkarecords``)."""
    topic = f"t-rawheaders-{uuid.uuid4().hex[:8]}"
    async with kafka.started(kafka.admin(bootstrap, "test-admin")) as admin:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    tp = TopicPartition(topic, 0)
    async with kafka.started(kafka.producer(bootstrap, "test-raw")) as producer:
        assert isinstance(producer, AIOKafkaProducer)
        await producer.send_and_wait(topic, b"before", key=b"dev-1")
        assert await wire.produce_raw(producer, tp, wire.batch(RECORDS)) == 1
        await producer.send_and_wait(topic, b"after", key=b"dev-1")
    records = await kafka.read_all(bootstrap, [tp], client_id="test-raw-reader", timeout_ms=20_000)
    assert [r.value for r in records] == [b"before", b"first", b"second", b"third", b"after"]
    assert [[k for k, _ in r.headers] for r in records[1:4]] == KEYS_READ


# -- compressed batches: inflated within a bound, or refused whole -----------------------------------

CODECS = {"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def _compressed(codec: int, values: list[bytes], base_offset: int = 0) -> bytes:
    builder = DefaultRecordBatchBuilder(2, codec, 0, -1, -1, -1, 1 << 30)
    for i, value in enumerate(values):
        builder.append(i, 1_700_000_000_000 + i, b"dev-1", value, [("h", b"v")])
    raw = bytearray(builder.build())
    raw[0:8] = base_offset.to_bytes(8, "big")
    return bytes(raw)


def _partition(raw: bytes, fetch_offset: int = 0) -> fetcher.PartitionRecords:
    return fetcher.PartitionRecords(
        TopicPartition("t", 0), kafkarecords.LenientMemoryRecords(raw), [], fetch_offset, None, None, True,
        fetcher.READ_COMMITTED,
    )  # fmt: skip


@pytest.mark.parametrize("codec", CODECS)
def test_a_compressed_batch_within_the_bound_reads_as_aiokafka_reads_it(codec: str) -> None:
    values = [bytes([i]) * 50_000 + b"end" for i in range(20)]
    raw = _compressed(CODECS[codec], values)
    assert _read(kafkarecords.LenientMemoryRecords(raw)) == _read(MemoryRecords(raw))
    assert [r.value for r in _partition(raw)] == values
    inflated = len(_compressed(0, values)) - 61  # its records as an uncompressed batch holds them
    measured = kafkarecords.inflated_size(CODECS[codec], memoryview(raw)[61:], 1 << 30)
    # snappy's last block counts for at least 4 KiB; lz4's compressed blocks for their frame's block size
    slack = {"gzip": 0, "zstd": 0, "snappy": 4096, "lz4": 4 << 20}[codec]
    assert inflated <= measured <= inflated + slack, measured


@pytest.mark.parametrize(
    ("codec", "data"),
    [
        (  # 200,000 one-byte uncompressed blocks in one frame
            "lz4",
            struct.pack("<IBBB", 0x184D2204, 0x60, 0x40, 0)
            + (struct.pack("<I", 0x80000001) + b"x") * 200_000
            + bytes(4),
        ),
        ("lz4", (struct.pack("<IBBB", 0x184D2204, 0x60, 0x40, 0) + bytes(4)) * 90_000),  # empty frames
        ("snappy", b"\x82SNAPPY\x00" + struct.pack(">ii", 1, 1) + struct.pack(">ib", 1, 0) * 200_000),
    ],
    ids=["lz4-blocks", "lz4-frames", "snappy-blocks"],
)
def test_a_batch_of_thousands_of_tiny_blocks_is_past_the_bound_within_4096_of_them(
    codec: str, data: bytes
) -> None:
    """Counted at their stated sizes, a 1 MiB batch of tiny blocks (or frames) measured under the bound
    after walking every header in Python: 55-100 ms of the worker's loop a batch. Each counts for at
    least 4 KiB now, so the walk is past 16 MiB after 4,096 of them."""
    walked = _Walked()
    with pytest.MonkeyPatch.context() as patch:  # every header read goes through one of these
        patch.setattr(kafkarecords, "struct", walked)
        patch.setattr(kafkarecords, "_LENGTH", walked)
        limit = kafkarecords.MAX_INFLATED_BATCH_BYTES
        measured = kafkarecords.inflated_size(CODECS[codec], memoryview(data), limit)
    assert measured > kafkarecords.MAX_INFLATED_BATCH_BYTES
    assert walked.headers <= 2 * 4096 + 2, walked.headers


class _Walked:
    """Counts the header reads of `inflated_size` (stands in for the ``struct`` module and a Struct)."""

    def __init__(self) -> None:
        self.headers = 0

    def unpack_from(self, *args: Any) -> tuple[Any, ...]:
        self.headers += 1
        fmt, rest = (args[0], args[1:]) if isinstance(args[0], str) else (">i", args)
        return struct.unpack_from(fmt, *rest)


@pytest.mark.parametrize("codec", CODECS)
def test_a_batch_that_inflates_past_the_bound_is_one_refused_record_at_its_last_offset(codec: str) -> None:
    """Zeros inflate thousands of times: 32 MiB from a batch of a few KiB. aiokafka would inflate it
    whole; it is measured in pieces and stands for one refused record, and the partition reads on."""
    bomb = _compressed(CODECS[codec], [bytes(2 << 20)] * 16, base_offset=5)
    assert len(bomb) < kafkarecords.MAX_INFLATED_BATCH_BYTES // 8
    after = _compressed(0, [b"next"], base_offset=21)
    partition = _partition(bomb + after, fetch_offset=5)
    refused, following = list(partition)
    assert refused.offset == 20, "at the bomb's last offset: its offsets are passed"
    assert refused.key is None
    why = kafkarecords.refused(refused.headers)
    assert why is not None
    assert why.startswith("a compressed batch of offsets 5-20")
    assert f"inflates past {kafkarecords.MAX_INFLATED_BATCH_BYTES} bytes" in why
    assert refused.value == bomb[: kafkarecords.KEPT_BATCH_BYTES]
    assert kafkarecords.refused_original(refused.headers) == (len(bomb), hashlib.sha256(bomb).hexdigest())
    assert (following.offset, following.value) == (21, b"next")
    assert partition.next_fetch_offset == 22
    assert kafkarecords.refused(following.headers) is None
    assert kafkarecords.refused_original(following.headers) is None


@pytest.mark.parametrize(
    "forged",
    [b"12 " + b"a" * 63, b"x " + b"a" * 64, b"1 " + b"A" * 64, b"\xff", b"", None, b"1  " + b"a" * 64],
)
def test_a_producers_own_refusal_headers_are_not_taken_for_the_readers_mark(forged: bytes | None) -> None:
    """A device can write any header: only this reader's exact form is a mark, and nothing raises."""
    headers = [(kafkarecords.REFUSED, b"mine"), (kafkarecords.REFUSED_ORIGINAL, forged)]
    assert kafkarecords.refused_original(headers) is None
    assert kafkarecords.refused_original(headers[:1]) is None


def test_measuring_stops_just_past_the_bound() -> None:
    """zstd's 256 MiB of zeros is counted only until it is past the bound, never inflated whole."""
    bomb = _compressed(4, [bytes(16 << 20)] * 16)
    measured = kafkarecords.inflated_size(4, memoryview(bomb)[61:], 4 << 20)
    assert 4 << 20 < measured <= (4 << 20) + (1 << 20)


def test_a_value_larger_than_any_uncompressed_record_is_cut_and_marked() -> None:
    big = bytes(range(256)) * ((kafkarecords.MAX_RECORD_VALUE_BYTES + 10) // 256 + 1)
    raw = _compressed(4, [b"small", big])
    small, cut = list(_partition(raw))
    assert small.value == b"small"
    assert kafkarecords.refused(small.headers) is None
    assert cut.offset == 1
    assert cut.value == big[: kafkarecords.KEPT_BATCH_BYTES]
    why = kafkarecords.refused(cut.headers)
    assert why is not None
    assert f"a value of {len(big)} bytes" in why
    assert kafkarecords.refused_original(cut.headers) == (len(big), hashlib.sha256(big).hexdigest())
    assert list(cut.headers)[2:] == [("h", b"v")], "its own headers follow the marks"


@pytest.mark.parametrize("codec", ["gzip", "zstd", "lz4", "snappy"])
def test_a_batch_its_codec_cannot_read_is_refused_not_raised(codec: str) -> None:
    raw = bytearray(_compressed(CODECS[codec], [b"x" * 5000]))
    raw[61:] = b"\x00\x01garbage" * ((len(raw) - 61) // 9) + b"\x00" * ((len(raw) - 61) % 9)
    raw[17:21] = calc_crc32c(bytes(raw[21:])).to_bytes(4, "big")  # a valid checksum over the garbage
    (refused,) = list(_partition(bytes(raw)))
    why = kafkarecords.refused(refused.headers)
    assert why is not None
    assert why.startswith("a compressed batch of offsets 0-0"), why
    assert "not read" in why


def test_a_gzip_bomb_behind_a_small_first_member_is_measured_whole() -> None:
    """aiokafka's gzip reader reads every member of the stream: a small first member must not hide a
    bomb in the next."""
    import gzip

    members = gzip.compress(b"x" * 100) + gzip.compress(bytes(32 << 20))
    assert kafkarecords.inflated_size(1, memoryview(members), 16 << 20) > 16 << 20
