"""Every parser of a record another principal writes is total: any bytes, any msgpack- or JSON-shaped
value, or a valid record with any part replaced gives a value or the parser's declared error, never
another exception. Cloud records (``cloud.summaries``, ``cloud.samples``, ``cloud.labels``), worker
reports (``control.workers``) and dead-letter headers; ``control.models`` is in
``tests/pipeline/test_registry_signed_state.py``."""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from edgestream.pipeline.contract.cloud import Label, PartialSummary, Sample
from edgestream.pipeline.contract.deadletter import (
    ATTEMPT,
    DELIVERY_ATTEMPT,
    ORIGIN_OFFSET,
    REQUIRED_HEADERS,
    DeadLetter,
    MalformedDeadLetter,
    attempt_of,
    dead_letter_headers,
)
from edgestream.pipeline.errors import ShapeMismatch, UndecodableRecord
from edgestream.pipeline.registry.reports import WorkerReport

from ..hostile import json_values, msgpack_values, mutated


def _summary() -> PartialSummary:
    summary = PartialSummary("eu-west", "node-a", "embedding-scorer", 2, 1_750_000_000_000)
    for i in range(5):
        summary.add_result(i % 3, 0.1 * i, 4.0 * i)
    summary.add_dead_letter("infer_failed")
    return summary


SAMPLE = Sample(b"r" * 16, "eu-west", "embedding-scorer", 2, 1, b"p" * 16, (0.5, -1.0), 1, (0.2, 0.8))
LABEL = Label(b"r" * 16, "embedding-scorer", 1, 1)
REPORT = WorkerReport(
    "node-a", "eu-west", 1, {"embedding-scorer": 7, "frame-classifier": None}, {"m": (1, 2)}
)
PARSERS = (PartialSummary.from_bytes, Sample.from_bytes, Label.from_bytes)


def _map(raw: bytes) -> Any:
    return msgpack.unpackb(raw, raw=False, strict_map_key=False)


def _only_declared(parse: Any, value: bytes) -> None:
    with contextlib.suppress(UndecodableRecord):  # declared: the reader skips, logs and counts it
        parse(value)


def _packed(value: Any) -> bytes | None:
    try:
        return msgpack.packb(value, use_bin_type=True)
    except (OverflowError, ValueError, TypeError):
        return None  # not representable in msgpack (an integer past 64 bits)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("results", math.inf),  # int(inf): OverflowError crashed `rollout watch` before
        ("results", math.nan),
        ("results", -5),
        ("results", 2**64 - 1),
        ("results", True),
        ("lat", [1] * 12 + [math.inf]),
        ("dlq", {"infer_failed": -1}),
        ("dlq", [["infer_failed", 1]]),
        ("labels", {1: 1e300}),
        ("mver", "2"),
    ],
)
def test_a_summary_with_a_hostile_count_is_undecodable(field: str, value: Any) -> None:
    fields = _map(_summary().to_bytes())
    fields[field] = value
    with pytest.raises(UndecodableRecord):
        PartialSummary.from_bytes(msgpack.packb(fields, use_bin_type=True))


@pytest.mark.parametrize(
    ("field", "value"),
    [("rid", 10**18), ("rid", [1, 2]), ("x", [math.nan]), ("scores", [math.inf]), ("label", 1.5)],
)
def test_a_sample_with_a_hostile_field_is_undecodable(field: str, value: Any) -> None:
    fields = _map(SAMPLE.to_bytes())
    fields[field] = value
    with pytest.raises(UndecodableRecord):
        Sample.from_bytes(msgpack.packb(fields, use_bin_type=True))


def test_valid_records_still_parse() -> None:
    assert PartialSummary.from_bytes(_summary().to_bytes()) == _summary()
    assert Sample.from_bytes(SAMPLE.to_bytes()) == SAMPLE
    assert Label.from_bytes(LABEL.to_bytes()) == LABEL
    assert WorkerReport.from_bytes(REPORT.to_bytes()) == REPORT


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
@example(b"\x91" * 5000)  # 5,000 nested arrays
@example(b"\xc1")  # a reserved msgpack byte
def test_cloud_bytes_never_raise_another_error(value: bytes) -> None:
    for parse in PARSERS:
        _only_declared(parse, value)


@settings(max_examples=300, deadline=None)
@given(msgpack_values)
def test_any_msgpack_value_as_a_cloud_record_never_raises_another_error(value: Any) -> None:
    packed = _packed(value)
    if packed is not None:
        for parse in PARSERS:
            _only_declared(parse, packed)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([_summary().to_bytes(), SAMPLE.to_bytes(), LABEL.to_bytes()]).flatmap(
        lambda raw: mutated(_map(raw), msgpack_values)
    )
)
@example({**_map(_summary().to_bytes()), "results": math.inf})
def test_a_cloud_record_with_any_part_replaced_never_raises_another_error(value: Any) -> None:
    packed = _packed(value)
    if packed is not None:
        for parse in PARSERS:
            _only_declared(parse, packed)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
@example(b'{"v":1,"node":"n","region":"r","at_ms":1e999,"revisions":{},"served":{}}')
@example(b"[" * 100_000)
def test_worker_reports_never_raise_another_error(value: bytes) -> None:
    _only_declared(WorkerReport.from_bytes, value)


@settings(max_examples=300, deadline=None)
@given(mutated(json.loads(REPORT.to_bytes()), json_values))
@example({**json.loads(REPORT.to_bytes()), "revisions": {"m": math.inf}})
@example({**json.loads(REPORT.to_bytes()), "served": {"m": "12"}})
def test_a_report_with_any_part_replaced_never_raises_another_error(value: Any) -> None:
    _only_declared(WorkerReport.from_bytes, json.dumps(value).encode())


# -- dead-letter headers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]


VALID_HEADERS = dead_letter_headers(
    error=ShapeMismatch("a frame for an embedding model"),
    origin_topic="edge.eu-west.ingest.frame",
    origin_partition=3,
    origin_offset=42,
    origin_timestamp_ms=1_750_000_000_000,
    group_id="edgestream-edge-eu-west",
    worker_id="worker-1",
    key_id=7,
    attempt=1,
    now_ms=1_750_000_000_100,
    origin_headers=[("traceparent", b"00-abc")],
)

header_values = (
    st.none()
    | st.binary(max_size=30)
    | st.sampled_from([b"-1", b"0", b"9" * 19, b"9" * 20, b"1e3", b" 1", b"\xff", b"", "١٢".encode(), b"-0"])
)
header_names = st.sampled_from([*REQUIRED_HEADERS, DELIVERY_ATTEMPT, "edgestream.errors.key.id"]) | st.text(
    max_size=30
)


@st.composite
def _headers(draw: st.DrawFn) -> list[tuple[str, bytes | None]]:
    """Valid headers with some replaced, dropped or added, in any order."""
    headers: list[tuple[str, bytes | None]] = list(VALID_HEADERS)
    for _ in range(draw(st.integers(0, 4))):
        action = draw(st.sampled_from(["replace", "drop", "add"]))
        if action == "replace" and headers:
            i = draw(st.integers(0, len(headers) - 1))
            headers[i] = (headers[i][0], draw(header_values))
        elif action == "drop" and headers:
            headers.pop(draw(st.integers(0, len(headers) - 1)))
        else:
            headers.append((draw(header_names), draw(header_values)))
    return draw(st.permutations(headers))


@settings(max_examples=400, deadline=None)
@given(_headers(), st.none() | st.binary(max_size=10), st.none() | st.binary(max_size=10))
@example([(ORIGIN_OFFSET, b"9" * 20)], None, b"v")
@example([(ATTEMPT, "١".encode())], b"k", b"v")  # a non-ASCII digit: int() would accept it
def test_dead_letter_headers_never_raise_another_error(
    headers: list[tuple[str, bytes | None]], key: bytes | None, value: bytes | None
) -> None:
    record = _Record("edge.eu-west.dlq", 0, 5, key, value, headers)
    try:
        letter = DeadLetter.from_record(record)
    except MalformedDeadLetter:
        return
    assert letter.attempt >= 1
    assert letter.origin_offset >= 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(header_names, header_values), max_size=6))
@example([(DELIVERY_ATTEMPT, b"9" * 19)])
@example([(DELIVERY_ATTEMPT, "٣".encode())])
def test_a_replayed_records_attempt_never_raises(headers: list[tuple[str, bytes | None]]) -> None:
    assert attempt_of(headers) >= 1
