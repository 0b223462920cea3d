"""Result and audit records: round trips with the documented keys, refusals, and the chain fields."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import msgpack
import pytest

from edgestream.pipeline.contract.records import CHAIN_ORIGIN, AuditRecord, ResultRecord, audit_digest
from edgestream.pipeline.errors import ContractError, UndecodableRecord, UnsupportedVersion

RESULT = ResultRecord(
    request_id=bytes(range(16)),
    device_id="dev-1",
    model="frame-classifier",
    model_version=4,
    label=2,
    scores=(0.1, 0.2, 0.7),
    queue_ms=1.5,
    infer_ms=2.25,
    total_ms=12.0,
    batch_size=8,
    node="edge-eu-west-0",
    region="eu-west",
    produced_at_ms=1_700_000_000_123,
)
AUDIT_OK = AuditRecord(
    timestamp_ms=1_700_000_000_123,
    request_id=bytes(range(16)),
    node="edge-eu-west-0",
    region="eu-west",
    device_id="dev-1",
    model="frame-classifier",
    model_version=4,
    outcome="ok",
    reason=None,
    latency_ms=12.0,
)
AUDIT_DEAD = AuditRecord(
    timestamp_ms=1_700_000_000_123,
    request_id=None,
    node="edge-eu-west-0",
    region="eu-west",
    device_id=None,
    model=None,
    model_version=None,
    outcome="dead_letter",
    reason="undecodable",
    latency_ms=0.25,
)


def test_records_round_trip_with_documented_keys() -> None:
    assert ResultRecord.from_bytes(RESULT.to_bytes()) == RESULT
    assert AuditRecord.from_bytes(AUDIT_OK.to_bytes()) == AUDIT_OK
    assert AuditRecord.from_bytes(AUDIT_DEAD.to_bytes()) == AUDIT_DEAD
    assert list(msgpack.unpackb(RESULT.to_bytes())) == [
        "v", "rid", "dev", "model", "mver", "label", "scores",
        "q_ms", "i_ms", "t_ms", "bs", "node", "region", "at_ms",
    ]  # fmt: skip
    assert list(msgpack.unpackb(AUDIT_OK.to_bytes())) == [
        "v", "at_ms", "rid", "node", "region", "dev", "model", "mver", "outcome", "lat_ms",
    ]  # fmt: skip
    assert list(msgpack.unpackb(AUDIT_DEAD.to_bytes())) == [
        "v", "at_ms", "node", "region", "outcome", "reason", "lat_ms",
    ]  # fmt: skip


def test_audit_records_carry_no_payload() -> None:
    fields = msgpack.unpackb(AUDIT_OK.to_bytes())
    assert not {"scores", "label", "ct", "b"} & set(fields)


def test_records_ignore_unknown_keys_and_accept_integer_floats() -> None:
    fields = msgpack.unpackb(RESULT.to_bytes())
    fields.update({"new_field": [1, 2], "q_ms": 2, "scores": [0, 1]})
    parsed = ResultRecord.from_bytes(msgpack.packb(fields))
    assert parsed.queue_ms == 2.0
    assert parsed.scores == (0.0, 1.0)
    assert isinstance(parsed.scores[0], float)


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"\xc1", UndecodableRecord),
        (msgpack.packb([1]), UndecodableRecord),
        (msgpack.packb({"v": "1"}), UndecodableRecord),
        (msgpack.packb({"v": 1}), UndecodableRecord),
        (msgpack.packb({**msgpack.unpackb(RESULT.to_bytes()), "rid": b"short"}), UndecodableRecord),
        (msgpack.packb({**msgpack.unpackb(RESULT.to_bytes()), "label": 1.0}), UndecodableRecord),
        (msgpack.packb({**msgpack.unpackb(RESULT.to_bytes()), "scores": "0.5"}), UndecodableRecord),
        (msgpack.packb({**msgpack.unpackb(RESULT.to_bytes()), "scores": [None]}), UndecodableRecord),
        (msgpack.packb({**msgpack.unpackb(RESULT.to_bytes()), "v": 2}), UnsupportedVersion),
    ],
)
def test_bad_result_records(raw: bytes, error: type[ContractError]) -> None:
    with pytest.raises(error) as info:
        ResultRecord.from_bytes(raw)
    assert info.value.reason in ("undecodable_record", "bad_version")


@pytest.mark.parametrize(
    "change",
    [{"outcome": "maybe"}, {"outcome": None}, {"rid": b"x"}, {"lat_ms": "1"}, {"mver": 1.5}, {"node": None}],
)
def test_bad_audit_records(change: dict[str, Any]) -> None:
    fields = {**msgpack.unpackb(AUDIT_OK.to_bytes()), **change}
    with pytest.raises(UndecodableRecord):
        AuditRecord.from_bytes(msgpack.packb(fields))


AUDIT_LINKED = dataclasses.replace(
    AUDIT_OK, chain="edge.eu-west.ingest.frame/2", segment=1200, seq=7, prev=bytes(range(32))
)


def test_linked_audit_records_round_trip_with_chain_keys_last() -> None:
    raw = AUDIT_LINKED.to_bytes()
    assert AuditRecord.from_bytes(raw) == AUDIT_LINKED
    assert list(msgpack.unpackb(raw)) == [
        "v", "at_ms", "rid", "node", "region", "dev", "model", "mver", "outcome", "lat_ms",
        "chain", "seg", "seq", "prev",
    ]  # fmt: skip
    # Records written before chains still parse, with no chain fields.
    assert AuditRecord.from_bytes(AUDIT_OK.to_bytes()).chain is None
    linked_dead = dataclasses.replace(AUDIT_DEAD, chain="c/0", segment=0, seq=1, prev=CHAIN_ORIGIN)
    assert AuditRecord.from_bytes(linked_dead.to_bytes()) == linked_dead


def test_audit_record_bytes_are_deterministic() -> None:
    """The chain hashes these bytes: equal records, equal bytes, and a parse re-encodes to them."""
    raw = AUDIT_LINKED.to_bytes()
    twin = dataclasses.replace(AUDIT_LINKED, latency_ms=12)  # an int latency is encoded as the float
    assert twin.to_bytes() == raw
    assert AuditRecord.from_bytes(raw).to_bytes() == raw
    assert audit_digest(raw) == hashlib.sha256(raw).digest()
    assert dataclasses.replace(AUDIT_LINKED, seq=8).to_bytes() != raw


@pytest.mark.parametrize(
    "change",
    [
        {"seq": None},
        {"prev": None},
        {"chain": None},
        {"seg": None},
        {"chain": ""},
        {"chain": 3},
        {"seg": -1},
        {"seg": "0"},
        {"seq": 0},
        {"seq": 1.0},
        {"prev": bytes(31)},
        {"prev": "00" * 32},
    ],
)
def test_bad_chain_fields(change: dict[str, Any]) -> None:
    fields = {**msgpack.unpackb(AUDIT_LINKED.to_bytes()), **change}
    with pytest.raises(UndecodableRecord, match="not an audit record"):
        AuditRecord.from_bytes(msgpack.packb(fields))
