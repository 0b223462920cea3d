"""Result records of models served by a signature (``docs/contract.md``, "Typed results"): the documented
test vectors decode to their records and encode back to the same bytes; malformed typed keys are
refused as undecodable records."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import msgpack
import pytest

from edgestream.pipeline.contract.records import ResultRecord
from edgestream.pipeline.contract.typed import TypedResult
from edgestream.pipeline.errors import UndecodableRecord

DOC = Path(__file__).resolve().parents[3] / "docs" / "contract.md"
BLOCK = re.compile(
    r"<!-- typed-result-vectors:begin -->\n```json\n(.*?)```\n<!-- typed-result-vectors:end -->", re.S
)


def _vectors() -> list[dict[str, Any]]:
    match = BLOCK.search(DOC.read_text())
    assert match is not None, "docs/contract.md lost its typed result vectors"
    vectors: list[dict[str, Any]] = json.loads(match.group(1))["vectors"]
    return vectors


def test_every_kind_has_a_vector() -> None:
    kinds = {v["record"].get("kind") for v in _vectors()}
    assert kinds == {None, "classification", "score", "vector", "named"}


@pytest.mark.parametrize("vector", _vectors(), ids=lambda v: v["name"])
def test_vectors_decode_to_their_records_and_encode_back(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["hex"])
    wire = msgpack.unpackb(raw)
    wire["rid"] = wire["rid"].hex()
    assert wire == vector["record"]
    record = ResultRecord.from_bytes(raw)
    assert record.to_bytes() == raw
    kind = vector["record"].get("kind")
    assert (record.typed is None) == (kind is None)
    if record.typed is not None:
        assert record.typed.kind == kind
        assert record.typed.class_name == vector["record"].get("cls")
        assert record.typed.threshold == vector["record"].get("thr")
        named = vector["record"].get("out")
        assert record.typed.named == (None if named is None else {k: tuple(v) for k, v in named.items()})


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"kind": "histogram"}, "'kind' must be one of"),
        ({"kind": "classification", "cls": 3}, "'cls' must be a str"),
        ({"kind": "score", "thr": "high"}, "'thr' must be a number"),
        ({"kind": "named", "out": [1.0]}, "'out' must be a map"),
        ({"kind": "named", "out": {"a": ["x"]}}, "'out.a' must hold numbers"),
        ({"kind": "named", "out": {"a": 1.0}}, "'out' maps output names"),
    ],
)
def test_malformed_typed_keys_are_undecodable(changes: dict[str, Any], words: str) -> None:
    raw = bytes.fromhex(_vectors()[0]["hex"])
    fields = msgpack.unpackb(raw)
    fields.update(changes)
    with pytest.raises(UndecodableRecord, match=re.escape(words)):
        ResultRecord.from_bytes(msgpack.packb(fields, use_bin_type=True))


def test_a_zoo_record_is_unchanged_by_typed_results() -> None:
    raw = bytes.fromhex(_vectors()[0]["hex"])
    assert b"kind" not in raw
    assert TypedResult.from_fields(msgpack.unpackb(raw)) is None


@pytest.mark.parametrize("vector", _vectors(), ids=lambda v: v["name"])
def test_vectors_validate_against_the_result_schema(vector: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (extra 'tools') validates the schemas")
    schema = json.loads((DOC.parent / "schemas" / "result.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(vector["record"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate({**vector["record"], "kind": "histogram"})
