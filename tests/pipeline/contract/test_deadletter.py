"""Dead-letter headers: what a worker writes reads back field for field; a bad record says what is wrong."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from edgestream.pipeline.contract import deadletter as dl
from edgestream.pipeline.errors import InferenceFailed, ShapeMismatch, UnknownKeyId


@dataclass(frozen=True)
class Record:
    """The fields of a consumed record that `DeadLetter.from_record` reads."""

    topic: str = "edge.eu-west.dlq"
    partition: int = 0
    offset: int = 41
    key: bytes | None = b"dev-1"
    value: bytes | None = b"\x85sealed\x00bytes"
    headers: Sequence[tuple[str, bytes | None]] = ()


def _headers(**overrides: Any) -> list[tuple[str, bytes]]:
    args: dict[str, Any] = {
        "error": UnknownKeyId("eu-west", 7),
        "origin_topic": "edge.eu-west.ingest.embedding",
        "origin_partition": 2,
        "origin_offset": 1234,
        "origin_timestamp_ms": 1_700_000_000_123,
        "group_id": "edgestream-edge-eu-west",
        "worker_id": "eu-west-host-42",
        "key_id": 7,
        "attempt": 1,
        "now_ms": 1_700_000_000_456,
    }
    args.update(overrides)
    return dl.dead_letter_headers(**args)


def test_headers_round_trip_through_from_record() -> None:
    headers = _headers(origin_headers=[("traceparent", b"00-abc-def-01")])
    letter = dl.DeadLetter.from_record(Record(headers=headers))
    assert letter == dl.DeadLetter(
        dlq_topic="edge.eu-west.dlq",
        dlq_partition=0,
        dlq_offset=41,
        reason="unknown_key",
        stage="decrypt",
        origin_topic="edge.eu-west.ingest.embedding",
        origin_partition=2,
        origin_offset=1234,
        origin_timestamp_ms=1_700_000_000_123,
        group_id="edgestream-edge-eu-west",
        worker_id="eu-west-host-42",
        exception_class="edgestream.pipeline.errors.UnknownKeyId",
        message="no master key 7 for region 'eu-west'",
        key_id=7,
        attempt=1,
        dead_lettered_at_ms=1_700_000_000_456,
        key=b"dev-1",
        value=b"\x85sealed\x00bytes",
        origin_headers=(("traceparent", b"00-abc-def-01"),),
    )
    assert letter.dlq_position() == "edge.eu-west.dlq[0]@41"
    assert letter.origin_position() == "edge.eu-west.ingest.embedding[2]@1234"


def test_header_names_and_values_are_plain_text_under_one_prefix() -> None:
    headers = dict(_headers())
    assert set(headers) == {*dl.REQUIRED_HEADERS, dl.KEY_ID}
    assert all(name.startswith("edgestream.errors.") for name in headers)
    assert headers[dl.ORIGIN_TOPIC] == b"edge.eu-west.ingest.embedding"
    assert headers[dl.ORIGIN_PARTITION] == b"2"
    assert headers[dl.ORIGIN_OFFSET] == b"1234"
    assert headers[dl.REASON] == b"unknown_key"
    assert headers[dl.STAGE] == b"decrypt"


def test_key_id_is_absent_when_the_envelope_was_not_decoded() -> None:
    headers = _headers(key_id=None, error=ShapeMismatch("x"))
    assert dl.KEY_ID not in dict(headers)
    assert dl.DeadLetter.from_record(Record(headers=headers)).key_id is None


def test_a_long_message_is_cut_to_500_characters() -> None:
    headers = dict(_headers(error=InferenceFailed("é" * 2000)))
    message = headers[dl.EXCEPTION_MESSAGE].decode()
    assert len(message) == dl.MAX_MESSAGE_CHARS == 500
    assert message.endswith("…")
    short = dict(_headers(error=InferenceFailed("short")))
    assert short[dl.EXCEPTION_MESSAGE] == b"short"


def test_origin_headers_are_kept_but_cannot_forge_error_headers() -> None:
    forged = [("traceparent", b"tp"), (dl.REASON, b"forged"), ("edgestream.errors.extra", b"x"), ("n", None)]
    headers = _headers(origin_headers=forged)
    assert headers[0] == ("traceparent", b"tp")
    assert [v for k, v in headers if k == dl.REASON] == [b"unknown_key"]
    assert "edgestream.errors.extra" not in dict(headers)
    assert dl.DeadLetter.from_record(Record(headers=headers)).origin_headers == (("traceparent", b"tp"),)


def test_attempt_must_count_from_one() -> None:
    with pytest.raises(ValueError, match="attempt"):
        _headers(attempt=0)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], 1),
        ([(dl.DELIVERY_ATTEMPT, b"3")], 3),
        ([(dl.DELIVERY_ATTEMPT, b"2"), (dl.DELIVERY_ATTEMPT, b"4")], 4),
        ([(dl.DELIVERY_ATTEMPT, b"junk")], 1),
        ([(dl.DELIVERY_ATTEMPT, b"-5")], 1),
        ([(dl.DELIVERY_ATTEMPT, None)], 1),
    ],
)
def test_attempt_of_an_ingest_record(headers: list[tuple[str, bytes | None]], expected: int) -> None:
    assert dl.attempt_of(headers) == expected


def test_replay_headers_mark_the_source_and_the_next_attempt() -> None:
    earlier = [
        ("traceparent", b"tp"),
        (dl.REPLAYED_FROM, b"edge.eu-west.dlq[0]@3"),
        (dl.DELIVERY_ATTEMPT, b"2"),
    ]
    headers = _headers(attempt=dl.attempt_of(earlier), origin_headers=earlier)
    letter = dl.DeadLetter.from_record(Record(offset=9, headers=headers))
    assert letter.attempt == 2
    assert letter.replay_headers() == [
        ("traceparent", b"tp"),
        (dl.REPLAYED_FROM, b"edge.eu-west.dlq[0]@9"),
        (dl.DELIVERY_ATTEMPT, b"3"),
    ]


def test_a_record_without_error_headers_names_every_missing_one() -> None:
    with pytest.raises(dl.MalformedDeadLetter) as caught:
        dl.DeadLetter.from_record(Record(offset=5, headers=[("traceparent", b"tp")]))
    err = caught.value
    assert err.reason == "bad_dead_letter"
    assert (err.topic, err.partition, err.offset) == ("edge.eu-west.dlq", 0, 5)
    assert err.problems == tuple(f"missing header {name}" for name in dl.REQUIRED_HEADERS)
    assert "edge.eu-west.dlq[0]@5 is not an edgestream dead letter" in str(err)


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        (dl.ORIGIN_OFFSET, b"12x", "not an integer >= 0"),
        (dl.ORIGIN_PARTITION, b"-1", "not an integer >= 0"),
        (dl.ORIGIN_OFFSET, b" 1", "not an integer >= 0"),
        (dl.ATTEMPT, b"0", "not an integer >= 1"),
        (dl.KEY_ID, b"k", "not an integer >= 0"),
        (dl.STAGE, b"transcode", "not one of"),
        (dl.REASON, b"", "is empty"),
        (dl.WORKER_ID, b"\xff\xfe", "not UTF-8"),
        (dl.ORIGIN_TOPIC, b"t" * 250, "not a Kafka topic name"),  # a backend would remember it whole
        (dl.ORIGIN_TOPIC, b"edge eu-west", "not a Kafka topic name"),
        (dl.ORIGIN_TOPIC, b"..", "not a Kafka topic name"),
    ],
)
def test_a_bad_header_value_is_named(name: str, value: bytes, problem: str) -> None:
    headers = [(k, v) for k, v in _headers() if k != name] + [(name, value)]
    with pytest.raises(dl.MalformedDeadLetter, match=problem) as caught:
        dl.DeadLetter.from_record(Record(headers=headers))
    assert len(caught.value.problems) == 1
    assert name in caught.value.problems[0]


def test_a_repeated_header_counts_once_the_last_wins() -> None:
    headers = [*_headers(), (dl.ATTEMPT, b"5")]
    assert dl.DeadLetter.from_record(Record(headers=headers)).attempt == 5


def test_a_record_without_a_value_is_not_a_dead_letter() -> None:
    with pytest.raises(dl.MalformedDeadLetter, match="no value"):
        dl.DeadLetter.from_record(Record(value=None, headers=_headers()))


def test_an_empty_message_and_a_null_key_are_allowed() -> None:
    letter = dl.DeadLetter.from_record(Record(key=None, headers=_headers(error=InferenceFailed(""))))
    assert letter.message == ""
    assert letter.key is None
