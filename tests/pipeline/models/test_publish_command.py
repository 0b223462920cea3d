"""``edgestream registry publish MODEL --onnx FILE --signature FILE`` refuses, before it connects to any
broker or stores anything, a signature that does not match its graph (each difference on its own line),
a malformed signature file (naming the field), half of the pair, and a zoo model's name."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from edgestream.cli import app
from tests.pipeline.models.usermodels import fraud_model

NO_BROKER = "127.0.0.1:1"
"""A bootstrap nothing listens on: a refusal must come before any connection."""


def _publish(tmp_path: Path, *args: str) -> tuple[int, str]:
    home = tmp_path / "registry"
    if not home.exists():
        keygen = CliRunner().invoke(app, ["registry", "keygen", "--home", str(home)], catch_exceptions=False)
        assert keygen.exit_code == 0, keygen.output
    result = CliRunner().invoke(
        app,
        ["registry", "publish", *args, "--home", str(home), "--bootstrap", NO_BROKER],
        env={"COLUMNS": "250"},
        catch_exceptions=False,
    )
    return result.exit_code, result.output


def _files(tmp_path: Path, signature: dict[str, object]) -> tuple[str, str]:
    model = fraud_model()
    onnx, sig = tmp_path / "fraud.onnx", tmp_path / "fraud.json"
    onnx.write_bytes(model.onnx)
    sig.write_text(json.dumps(signature))
    return str(onnx), str(sig)


def test_a_mismatch_is_refused_with_each_difference_and_nothing_stored(tmp_path: Path) -> None:
    model = fraud_model()
    outputs = {"kind": "classification", "probabilities": "probabilities", "classes": ["a", "b"]}
    onnx, sig = _files(tmp_path, {**model.signature, "outputs": outputs})
    code, output = _publish(tmp_path, "fraud", "--onnx", onnx, "--signature", sig)
    assert code == 1
    assert "does not match" in output
    assert "not published" in output
    assert "\n  undeclared output 'label' (tensor(int64))" in output
    stored = tmp_path / "registry" / "artifacts"  # `keygen` makes the store; nothing goes into it
    assert not [path for path in stored.rglob("*") if path.is_file()]


def test_a_malformed_signature_names_its_field(tmp_path: Path) -> None:
    model = fraud_model()
    onnx, sig = _files(tmp_path, {**model.signature, "sample_inputs": "sometimes"})
    code, output = _publish(tmp_path, "fraud", "--onnx", onnx, "--signature", sig)
    assert code == 1
    assert "sample_inputs: Input should be a valid boolean" in output


def test_half_a_pair_and_a_zoo_name_are_refused(tmp_path: Path) -> None:
    onnx, sig = _files(tmp_path, fraud_model().signature)
    code, output = _publish(tmp_path, "fraud", "--onnx", onnx)
    assert code == 1
    assert "--onnx and --signature go together" in output
    code, output = _publish(tmp_path, "embedding-scorer", "--onnx", onnx, "--signature", sig)
    assert code == 1
    assert "is a zoo model" in output
