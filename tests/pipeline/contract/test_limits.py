"""Record size limits: a dead letter always fits the producer's limit, whole when its record was
admitted, truncated (and marked, never replayable) otherwise; the envelope limit follows from them."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from aiokafka import TopicPartition
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from hypothesis import example, given, settings
from hypothesis import strategies as st

from edgestream.pipeline.contract import deadletter as dl
from edgestream.pipeline.contract import limits
from edgestream.pipeline.contract.deadletter import MAX_MESSAGE_CHARS
from edgestream.pipeline.errors import OversizedEnvelope, RecordFailed
from edgestream.workers.edge.settings import WorkerSettings
from edgestream.workers.ops.dlq import DlqBatch, ReplayReport, _choose


@dataclass(frozen=True)
class Record:
    """A consumed DLQ record, as `DeadLetter.from_record` reads it."""

    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]]
    topic: str = "edge.eu-west.dlq"
    partition: int = 0
    offset: int = 7


def _aiokafka_size(key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]) -> int:
    """What aiokafka compares with ``max_request_size`` before sending."""
    size: int = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, list(headers))
    return size


def _error_headers(origin: Sequence[tuple[str, bytes]] = (), **kw: object) -> list[tuple[str, bytes]]:
    args: dict[str, object] = {
        "error": OversizedEnvelope(2_000_000, 1_032_192),
        "origin_topic": "edge.eu-west.ingest.frame",
        "origin_partition": 5,
        "origin_offset": 99,
        "origin_timestamp_ms": 1_700_000_000_000,
        "group_id": "edgestream-edge-eu-west",
        "worker_id": "eu-west-host-1",
        "key_id": 3,
        "attempt": 1,
        "now_ms": 1_700_000_000_100,
        "origin_headers": origin,
    }
    args.update(kw)
    return dl.dead_letter_headers(**args)  # type: ignore[arg-type]


def test_the_default_envelope_limit_is_derived_from_the_producer_and_broker_limits() -> None:
    assert WorkerSettings.model_fields["max_envelope_bytes"].default == limits.DEFAULT_MAX_ENVELOPE_BYTES
    assert limits.DEFAULT_MAX_ENVELOPE_BYTES == 1_032_192
    assert limits.BROKER_MESSAGE_MAX_BYTES >= limits.PRODUCER_MAX_REQUEST_BYTES
    parts = (
        limits.BATCH_OVERHEAD_BYTES + 15,
        limits.MAX_KEPT_KEY_BYTES,
        limits.MAX_KEPT_ORIGIN_HEADERS_BYTES,
        limits.MAX_ERROR_HEADERS_BYTES,
    )
    assert sum(parts) <= limits.DEAD_LETTER_HEADROOM_BYTES


def test_the_largest_error_headers_stay_within_their_bound() -> None:
    """Every error header at its longest: a 500-character message of 4-byte characters, names of the
    longest Kafka allows, the largest integers."""
    longest = _error_headers(
        error=RecordFailed("x" * 10_000, ValueError()),
        origin_topic="t" * 249,
        origin_partition=2**31 - 1,
        origin_offset=2**63 - 1,
        origin_timestamp_ms=2**63 - 1,
        group_id="g" * 255,
        worker_id="w" * 255,
        key_id=2**32 - 1,
        attempt=2**63 - 1,
        now_ms=2**63 - 1,
    )
    message = dict(longest)[dl.EXCEPTION_MESSAGE].decode()
    assert len(message) == MAX_MESSAGE_CHARS
    emoji = _error_headers(error=RecordFailed("\U0001f600" * 1000, ValueError()))
    extra = [
        (dl.TRUNCATED, b"value,key,headers"),
        (dl.ORIGINAL_SIZE, b"9" * 20),
        (dl.ORIGINAL_SHA256, b"f" * 64),
    ]
    for headers in (longest, emoji):
        assert limits.headers_size([*headers, *extra]) <= limits.MAX_ERROR_HEADERS_BYTES


def test_an_admitted_envelope_of_the_default_limit_is_dead_lettered_whole() -> None:
    """The hole: a 1,047,888-byte envelope's dead letter was 1,048,760 bytes, over the 1 MiB limit."""
    value = bytes(limits.DEFAULT_MAX_ENVELOPE_BYTES)
    key = b"d" * 128
    origin = [("traceparent", b"00-" + b"a" * 52), ("bulk", b"h" * 7000)]
    headers = _error_headers(origin)
    out_key, out_value, out_headers = dl.bounded_dead_letter(key, value, headers)
    assert (out_key, out_value, out_headers) == (key, value, headers)
    assert _aiokafka_size(out_key, out_value, out_headers) <= limits.PRODUCER_MAX_REQUEST_BYTES


def test_a_record_over_the_limit_is_cut_to_a_prefix_with_its_size_and_digest() -> None:
    value = bytes(range(256)) * 4096  # 1 MiB: over the limit with any header
    headers = _error_headers([("traceparent", b"00-abc-01")])
    key, prefix, out = dl.bounded_dead_letter(b"dev-1", value, headers)
    assert key == b"dev-1"
    assert prefix == value[: limits.DEAD_LETTER_PREFIX_BYTES]
    assert _aiokafka_size(key, prefix, out) <= limits.PRODUCER_MAX_REQUEST_BYTES
    letter = dl.DeadLetter.from_record(Record(key, prefix, out))
    assert letter.truncated == ("value",)
    assert letter.original_size == len(value)
    assert letter.original_sha256 == hashlib.sha256(value).hexdigest()
    assert letter.origin_headers == (("traceparent", b"00-abc-01"),)
    assert not letter.replayable
    assert letter.reason == "oversized"


def test_a_key_longer_than_any_device_id_is_cut_even_when_the_record_fits() -> None:
    """A megabyte key with a small value fits the producer's limit, but hashing it to choose the dead
    letter's partition took 90 ms of the worker's loop: it is cut to its first 1,024 bytes."""
    key = bytes(range(256)) * 1024  # 256 KiB
    key_, value, out = dl.bounded_dead_letter(key, b"sealed", _error_headers())
    assert key_ == key[: limits.MAX_KEPT_KEY_BYTES]
    letter = dl.DeadLetter.from_record(Record(key_, value, out))
    assert letter.truncated == ("key",)
    assert (letter.value, letter.original_size) == (b"sealed", 6)
    assert not letter.replayable
    kept = b"k" * limits.MAX_KEPT_KEY_BYTES
    assert dl.bounded_dead_letter(kept, b"sealed", _error_headers())[0] == kept, "up to 1,024 kept whole"


def test_a_piece_of_what_the_reader_did_not_read_whole_is_never_replayable() -> None:
    """A refused compressed batch comes as one record whose value is the batch's first bytes (a
    batch, not a record): even when it fits whole, its dead letter is marked cut, with the size and
    digest of what it came from, so ``dlq replay`` does not send the prefix back as a record."""
    batch = bytes(range(256)) * 40
    key, value, out = dl.bounded_dead_letter(
        None, batch, _error_headers(), cut_from=(1 << 20, hashlib.sha256(b"whole").hexdigest())
    )
    assert value == batch
    letter = dl.DeadLetter.from_record(Record(key, value, out))
    assert letter.truncated == ("value",)
    assert (letter.original_size, letter.original_sha256) == (1 << 20, hashlib.sha256(b"whole").hexdigest())
    assert not letter.replayable


def test_an_untruncated_dead_letter_is_replayable_and_carries_no_truncation_fields() -> None:
    headers = _error_headers()
    key, value, out = dl.bounded_dead_letter(b"dev-1", b"sealed", headers)
    letter = dl.DeadLetter.from_record(Record(key, value, out))
    assert (letter.truncated, letter.original_size, letter.original_sha256) == ((), None, None)
    assert letter.replayable


@settings(max_examples=60, deadline=None)
@given(
    key_len=st.one_of(st.none(), st.integers(0, 1 << 20)),
    value_len=st.integers(0, 1 << 20),
    own=st.lists(st.tuples(st.text(max_size=40), st.integers(0, 300_000)), max_size=6),
)
@example(key_len=128, value_len=limits.DEFAULT_MAX_ENVELOPE_BYTES + 1, own=[])
@example(key_len=2_000, value_len=10, own=[("h", 1_040_000)])
@example(key_len=1_040_000, value_len=10, own=[])
def test_any_dead_letter_fits_the_producer_limit(
    key_len: int | None, value_len: int, own: list[tuple[str, int]]
) -> None:
    key = None if key_len is None else b"k" * key_len
    value = b"v" * value_len
    origin = [(name, b"x" * size) for name, size in own]
    headers = _error_headers(origin)
    out_key, out_value, out_headers = dl.bounded_dead_letter(key, value, headers)
    size = _aiokafka_size(out_key, out_value, out_headers)
    assert size <= limits.record_size(out_key, out_value, out_headers) <= limits.PRODUCER_MAX_REQUEST_BYTES
    letter = dl.DeadLetter.from_record(Record(out_key, out_value, out_headers))
    if letter.truncated:
        assert value.startswith(letter.value)
        assert letter.original_size == value_len
        assert ("value" in letter.truncated) == (len(letter.value) < value_len)
    else:
        assert (out_key, out_value) == (key, value)
    assert out_key is None or len(out_key) <= limits.MAX_KEPT_KEY_BYTES


def test_a_malformed_truncation_header_is_named() -> None:
    headers = [*_error_headers(), (dl.TRUNCATED, b"value,everything"), (dl.ORIGINAL_SHA256, b"zz")]
    with pytest.raises(dl.MalformedDeadLetter) as caught:
        dl.DeadLetter.from_record(Record(b"k", b"v", headers))
    problems = caught.value.problems
    assert any(dl.TRUNCATED in p for p in problems)
    assert any(dl.ORIGINAL_SHA256 in p for p in problems)
    assert any(dl.ORIGINAL_SIZE in p for p in problems)  # missing


def test_replay_refuses_a_truncated_dead_letter_with_its_reason() -> None:
    whole = dl.DeadLetter.from_record(Record(b"dev-1", b"sealed", _error_headers(), offset=1))
    cut = dl.DeadLetter.from_record(
        Record(*dl.bounded_dead_letter(b"dev-1", bytes(2 << 20), _error_headers()), offset=2)
    )
    report = ReplayReport("g")
    batch = DlqBatch(TopicPartition("edge.eu-west.dlq", 0), [whole, cut], 3)
    chosen = _choose(batch, "eu-west", "oversized", report)
    assert chosen == [whole]
    assert report.skipped == {"truncated: not the record as received": 1}
