"""docs/schemas/ describes the records the reference encoders write: every record kind a backend meets
(result, audit, label, dead letter, partial summary, sample) validates in its decoded JSON form, and a record
that breaks the contract does not."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import msgpack
import pytest

from edgestream.pipeline.contract.cloud import Label, PartialSummary, Sample, pseudonym
from edgestream.pipeline.contract.deadletter import ERRORS_PREFIX, bounded_dead_letter, dead_letter_headers
from edgestream.pipeline.contract.envelope import new_request_id
from edgestream.pipeline.contract.records import CHAIN_ORIGIN, AuditRecord, ResultRecord
from edgestream.pipeline.errors import AuthenticationFailed

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is in the tools extra")

SCHEMAS = Path(__file__).resolve().parents[3] / "docs" / "schemas"
KINDS = ("result", "audit", "label", "dead-letter", "summary", "sample")


@cache
def validator(kind: str) -> Any:
    """A 2020-12 validator of ``docs/schemas/<kind>.schema.json`` (the schema itself checked first)."""
    schema = json.loads((SCHEMAS / f"{kind}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def json_form(value: Any) -> Any:
    """A decoded msgpack value as the schemas describe it: bin as lowercase hex, map keys as text."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): json_form(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_form(v) for v in value]
    return value


def decoded(raw: bytes) -> Any:
    """A msgpack record decoded and in its JSON form."""
    return json_form(msgpack.unpackb(raw, raw=False, strict_map_key=False))


def error_headers(headers: list[tuple[str, bytes]] | tuple[tuple[str, bytes | None], ...]) -> dict[str, str]:
    """A dead letter's ``edgestream.errors.*`` headers as text: the form its schema describes."""
    return {k: v.decode() for k, v in headers if k.startswith(ERRORS_PREFIX) and v is not None}


def assert_valid(kind: str, instance: Any) -> None:
    errors = [f"{list(e.path)}: {e.message}" for e in validator(kind).iter_errors(instance)]
    assert not errors, f"{kind}: {errors}"


def assert_invalid(kind: str, instance: Any) -> None:
    assert not validator(kind).is_valid(instance), f"{kind} accepted {instance!r}"


def _result() -> ResultRecord:
    return ResultRecord(
        request_id=new_request_id(),
        device_id="terminal-0042",
        model="embedding-scorer",
        model_version=3,
        label=1,
        scores=(0.1, 0.9),
        queue_ms=0.4,
        infer_ms=1.25,
        total_ms=7.0,
        batch_size=8,
        node="eu-west-1",
        region="eu-west",
        produced_at_ms=1_700_000_000_000,
    )


def _dead_letter(**overrides: Any) -> list[tuple[str, bytes]]:
    args: dict[str, Any] = {
        "error": AuthenticationFailed("tag mismatch"),
        "origin_topic": "edge.eu-west.ingest.embedding",
        "origin_partition": 2,
        "origin_offset": 99,
        "origin_timestamp_ms": 1_700_000_000_000,
        "group_id": "edgestream-edge-eu-west",
        "worker_id": "eu-west-1",
        "key_id": 4,
        "attempt": 1,
        "now_ms": 1_700_000_000_050,
        "origin_headers": [("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01")],
    }
    args.update(overrides)
    return dead_letter_headers(**args)


def examples() -> dict[str, list[Any]]:
    """Records of every kind, as the reference encoders write them, in their JSON form."""
    rid = new_request_id()
    summary = PartialSummary("eu-west", "eu-west-1", "embedding-scorer", 3, 1_700_000_000_000)
    summary.add_result(1, 0.93, 12.0)
    summary.add_result(0, 0.51, 3000.0)
    summary.add_dead_letter("bad_tag")
    sample = Sample(
        rid,
        "eu-west",
        "embedding-scorer",
        3,
        1_700_000_000_000,
        pseudonym(b"k" * 32, "terminal-0042"),
        (0.5, -1.25, 3.0),
        1,
        (0.07, 0.93),
    )
    _, _, truncated = bounded_dead_letter(b"dev", b"x" * 4096, _dead_letter(key_id=None), limit_bytes=2048)
    audit_ok = AuditRecord(
        1_700_000_000_000,
        rid,
        "eu-west-1",
        "eu-west",
        "terminal-0042",
        "embedding-scorer",
        3,
        "ok",
        None,
        7.0,
        "edge.eu-west.ingest.embedding/2",
        40,
        1,
        CHAIN_ORIGIN,
    )
    audit_dead = AuditRecord(
        1_700_000_000_000, None, "n", "eu-west", None, None, None, "dead_letter", "bad_tag", 0.5
    )
    return {
        "result": [decoded(_result().to_bytes())],
        "audit": [decoded(audit_ok.to_bytes()), decoded(audit_dead.to_bytes())],
        "label": [decoded(Label(rid, "embedding-scorer", 0, 1_700_000_100_000).to_bytes())],
        "dead-letter": [error_headers(_dead_letter()), error_headers(truncated)],
        "summary": [decoded(summary.to_bytes()), decoded(PartialSummary("eu", "n", "m", 0, 0).to_bytes())],
        "sample": [decoded(sample.to_bytes())],
    }


@pytest.mark.parametrize("kind", KINDS)
def test_records_from_the_reference_encoders_validate(kind: str) -> None:
    for instance in examples()[kind]:
        assert_valid(kind, instance)


def test_the_truncated_example_is_one() -> None:
    truncated = examples()["dead-letter"][1]
    assert truncated[f"{ERRORS_PREFIX}truncated"] == "value"


@pytest.mark.parametrize("kind", KINDS)
def test_each_schema_says_it_describes_the_decoded_form(kind: str) -> None:
    schema = json.loads((SCHEMAS / f"{kind}.schema.json").read_text())
    assert "decoded" in schema["description"]
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def _without(instance: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in instance.items() if k != key}


@pytest.mark.parametrize(
    ("kind", "breaks"),
    [
        ("result", lambda r: _without(r, "rid")),
        ("result", lambda r: {**r, "rid": r["rid"][:30]}),  # 15 bytes
        ("result", lambda r: {**r, "v": 2}),
        ("result", lambda r: {**r, "scores": ["0.1"]}),
        ("audit", lambda r: {**r, "outcome": "maybe"}),
        ("audit", lambda r: _without(r, "prev")),  # chain keys come together
        ("audit", lambda r: {**_without(r, "reason"), "outcome": "dead_letter"}),
        ("label", lambda r: _without(r, "model")),
        ("label", lambda r: {**r, "label": 1.5}),
        ("dead-letter", lambda r: _without(r, f"{ERRORS_PREFIX}reason")),
        ("dead-letter", lambda r: {**r, f"{ERRORS_PREFIX}stage": "elsewhere"}),
        ("dead-letter", lambda r: {**r, f"{ERRORS_PREFIX}offset": "-1"}),
        ("dead-letter", lambda r: {**r, f"{ERRORS_PREFIX}truncated": "value"}),  # without size and sha
        ("dead-letter", lambda r: {**r, "traceparent": "x"}),  # the record's own headers are not part
        ("summary", lambda r: {**r, "lat": r["lat"][:-1]}),
        ("summary", lambda r: {**r, "results": -1}),
        ("summary", lambda r: {**r, "labels": {"cat": 1}}),
        ("sample", lambda r: _without(r, "x")),
        ("sample", lambda r: {**r, "dev": "terminal-0042"}),  # an id, not a pseudonym
    ],
)
def test_a_record_that_breaks_the_contract_does_not_validate(kind: str, breaks: Any) -> None:
    assert_invalid(kind, breaks(examples()[kind][0]))
