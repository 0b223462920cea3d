"""The model signature: its validation names the bad field, files load from YAML and JSON, zoo models
derive theirs, and the graph check lists the exact differences between a signature and its graph."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edgestream.pipeline.models.graphcheck import check_graph, graph_differences
from edgestream.pipeline.models.signature import (
    BadSignatureFile,
    Classification,
    ModelSignature,
    Score,
    load_signature,
    parse_signature,
    zoo_signature,
)
from edgestream.pipeline.models.zoo import spec
from edgestream.pipeline.registry.errors import SignatureMismatch
from tests.pipeline.models.usermodels import FEATURES, fraud_model, named_model, regression_model


def _base(**changes: Any) -> dict[str, Any]:
    sig: dict[str, Any] = {
        "input": {"name": "X", "dtype": "float32", "shape": [None, 4]},
        "outputs": {"kind": "score", "name": "y"},
    }
    sig.update(changes)
    return sig


def test_defaults_are_safe() -> None:
    sig = parse_signature(_base())
    assert sig.sample_inputs is False
    assert sig.ingest == "embedding"
    assert sig.input.wire == ("float32",)
    assert sig.input.item_shape == (4,)


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"input": {"name": "X", "dtype": "float32", "shape": [3, 4]}}, "input.shape", "batch axis"),
        ({"input": {"name": "X", "dtype": "float32", "shape": [None]}}, "input.shape", "item axis"),
        ({"input": {"name": "X", "dtype": "float32", "shape": [None, 0]}}, "input.shape", "axis 1"),
        ({"input": {"name": "X", "dtype": "bf16", "shape": [None, 4]}}, "input.dtype", "float32"),
        (
            {"input": {"name": "X", "dtype": "float32", "shape": [None, 4], "wire": ["int4"]}},
            "input.wire[0]",
            "",
        ),
        (
            {"input": {"name": "X", "dtype": "float32", "shape": [None, 4], "normalise": {"std": 0}}},
            "input.normalise.std",
            "> 0",
        ),
        (
            {"input": {"name": "X", "dtype": "float32", "shape": [None, 4], "normalise": {"mean": [1, 2]}}},
            "normalise.mean",
            "2 values for 4 features",
        ),
        ({"input": {"name": "X", "dtype": "int64", "shape": [None, 4]}}, "input", "wire"),
        (
            {"input": {"name": "X", "dtype": "uint8", "shape": [None, 4], "wire": ["uint8", "float16"]}},
            "input",
            "wire must be [uint8]",
        ),
        ({"outputs": {"kind": "histogram", "name": "y"}}, "outputs", "histogram"),
        (
            {"outputs": {"kind": "classification", "probabilities": "p", "classes": ["a"]}},
            "outputs.classification.classes",
            "at least 2",
        ),
        ({"outputs": {"kind": "named", "outputs": ["a", "a"]}}, "outputs.named.outputs", "twice"),
        ({"outputs": {"kind": "score"}}, "outputs.score.name", "required"),
        (
            {"outputs": {"kind": "score", "name": "y", "threshold": "nan"}},
            "outputs.score.threshold",
            "finite",
        ),
        ({"colour": "red"}, "colour", "not permitted"),
        ({"ingest": "frame", "sample_inputs": True}, "(top)", "only embedding"),
        ({"format": 2}, "format", "1"),
    ],
)
def test_errors_name_the_field(changes: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(BadSignatureFile) as info:
        parse_signature(_base(**changes), "sig.yaml")
    message = str(info.value)
    assert message.startswith("sig.yaml: ")
    assert f"{field}: " in message
    assert words in message
    assert info.value.reason == "bad_signature_file"


def test_yaml_and_json_files_load_the_same(tmp_path: Path) -> None:
    yaml_text = """
input:
  name: X
  dtype: float32
  shape: [-1, 4]
  wire: [float16, int8]
  normalise: {mean: [1, 2, 3, 4], std: 2}
outputs: {kind: score, name: y, threshold: 0.5}
sample_inputs: true
"""
    (tmp_path / "s.yaml").write_text(yaml_text)
    from_yaml = load_signature(tmp_path / "s.yaml")
    (tmp_path / "s.json").write_text(json.dumps(from_yaml.to_json()))
    assert load_signature(tmp_path / "s.json") == from_yaml
    assert from_yaml.input.shape == (None, 4)
    assert isinstance(from_yaml.outputs, Score)
    assert from_yaml.outputs.threshold == 0.5
    assert ModelSignature.model_validate(from_yaml.to_json()) == from_yaml


def test_unreadable_files_are_refused_with_the_path(tmp_path: Path) -> None:
    with pytest.raises(BadSignatureFile, match="cannot read"):
        load_signature(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("input: [unclosed\n")
    with pytest.raises(BadSignatureFile, match=r"bad\.yaml: not valid YAML"):
        load_signature(tmp_path / "bad.yaml")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(BadSignatureFile, match=r"bad\.json: not valid json"):
        load_signature(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(BadSignatureFile, match="a mapping"):
        load_signature(tmp_path / "list.json")


def test_zoo_models_derive_the_classification_contract() -> None:
    sig = zoo_signature(spec("frame-classifier", "tiny"))
    assert sig.input.name == "input"
    assert sig.input.shape == (None, 32, 32)
    assert sig.input.wire == ("uint8",)
    assert isinstance(sig.outputs, Classification)
    assert sig.outputs.names == ("probs", "label")
    assert sig.sample_inputs is False
    assert zoo_signature(spec("embedding-scorer", "tiny")).sample_inputs is True


@pytest.mark.parametrize("make", [fraud_model, regression_model, named_model])
def test_user_models_match_their_signatures(make: Any) -> None:
    model = make()
    assert graph_differences(model.onnx, parse_signature(model.signature)) == []


def test_every_difference_is_listed() -> None:
    model = fraud_model()
    sig = dict(model.signature)
    sig["input"] = {"name": "features", "dtype": "float32", "shape": [None, FEATURES]}
    assert graph_differences(model.onnx, parse_signature(sig)) == [
        "missing input 'features': the graph's inputs are ['X']",
        "undeclared input 'X': the graph needs it, the signature does not feed it",
    ]
    sig["input"] = {"name": "X", "dtype": "float16", "shape": [None, FEATURES + 1]}
    assert graph_differences(model.onnx, parse_signature(sig)) == [
        "input 'X' dtype: signature float16, graph tensor(float)",
        f"input 'X' shape: axis 1 is {FEATURES + 1} in the signature, {FEATURES} in the graph",
    ]


def test_an_output_the_signature_does_not_declare_is_a_difference() -> None:
    model = fraud_model()
    sig = dict(model.signature)
    sig["outputs"] = {
        "kind": "classification",
        "probabilities": "probabilities",
        "classes": ["legit", "fraud"],
    }
    assert graph_differences(model.onnx, parse_signature(sig)) == [
        "undeclared output 'label' (tensor(int64)): the graph gives it, the signature does not declare it"
    ]
    with pytest.raises(SignatureMismatch, match="undeclared output 'label'") as info:
        check_graph(model.onnx, parse_signature(sig), "fraud v1")
    assert info.value.reason == "signature_mismatch"


def test_output_types_and_widths_are_checked() -> None:
    model = fraud_model()
    sig = dict(model.signature)
    sig["outputs"] = {**model.signature["outputs"], "label": "probabilities", "probabilities": "label"}
    assert graph_differences(model.onnx, parse_signature(sig)) == [
        "output 'label' type: signature needs one of ['tensor(double)', 'tensor(float)', 'tensor(float16)'],"
        " graph gives tensor(int64)",
        "output 'probabilities' type: signature needs one of ['tensor(int32)', 'tensor(int64)'],"
        " graph gives tensor(float)",
    ]
    sig["outputs"] = {**model.signature["outputs"], "classes": ["a", "b", "c"]}
    assert graph_differences(model.onnx, parse_signature(sig)) == [
        "output 'probabilities': 2 probabilities per item, 3 classes declared"
    ]
    named = named_model()
    as_score = {**named.signature, "outputs": {"kind": "score", "name": "double"}}
    assert "undeclared output 'total'" in graph_differences(named.onnx, parse_signature(as_score))[0]


def test_a_graph_onnxruntime_cannot_load_is_a_mismatch() -> None:
    with pytest.raises(SignatureMismatch, match="onnxruntime cannot load"):
        check_graph(b"not onnx", parse_signature(_base()), "x v1")
