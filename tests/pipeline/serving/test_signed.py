"""Serving by a declared signature: a signed session answers what onnxruntime answers on the same
inputs (after the signature's normalisation), each wire dtype it declares is accepted and no other,
and each output kind becomes the typed keys of its result record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgestream.pipeline.contract.codec import decode_tensor, encode_tensor, pack_body, unpack_body
from edgestream.pipeline.contract.typed import NO_LABEL, TypedResult
from edgestream.pipeline.errors import ConfigError, ShapeMismatch
from edgestream.pipeline.files import sha256_hex
from edgestream.pipeline.models.signature import SignedArtifact, parse_signature
from edgestream.pipeline.serving.runtime import ort
from edgestream.pipeline.serving.signed import SignedInput, SignedSession
from tests.pipeline.models.usermodels import (
    FEATURES,
    FRAUD_CLASSES,
    UserModel,
    fraud_model,
    named_model,
    regression_model,
)


def _artifact(tmp_path: Path, model: UserModel, name: str = "user") -> SignedArtifact:
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(model.onnx)
    return SignedArtifact(name, 1, path, sha256_hex(model.onnx), parse_signature(model.signature))


def _direct(model: UserModel, x: np.ndarray[Any, Any]) -> list[np.ndarray[Any, Any]]:
    session = ort.InferenceSession(model.onnx, providers=["CPUExecutionProvider"])
    return list(session.run(None, {session.get_inputs()[0].name: x}))


def test_a_classifier_answers_as_onnxruntime_does(tmp_path: Path) -> None:
    model = fraud_model()
    session = SignedSession(_artifact(tmp_path, model))
    session.warm_up()
    labels, probs = session.run(model.X[:64])
    want_labels, want_probs = _direct(model, model.X[:64])
    np.testing.assert_array_equal(labels, want_labels)
    np.testing.assert_array_equal(probs, want_probs)
    label, scores, typed = session.typed_result(int(labels[0]), tuple(probs[0].tolist()))
    assert typed == TypedResult("classification", class_name=FRAUD_CLASSES[label])
    assert scores == tuple(probs[0].tolist())
    assert session.typed_result(7, (0.5, 0.5))[2].class_name is None  # a label outside the classes


def test_a_score_is_normalised_and_decided_by_its_threshold(tmp_path: Path) -> None:
    model = regression_model()
    session = SignedSession(_artifact(tmp_path, model))
    labels, scores = session.run(model.X[:32])
    norm = model.signature["input"]["normalise"]
    z = (model.X[:32] - np.asarray(norm["mean"], np.float32)) / np.asarray(norm["std"], np.float32)
    (want,) = _direct(model, z)
    np.testing.assert_allclose(scores, want, rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(labels, (want[:, 0] >= 0.0).astype(np.int64))
    label, out, typed = session.typed_result(int(labels[0]), (float(scores[0, 0]),))
    assert typed == TypedResult("score", threshold=0.0)
    assert (label, out) == (int(labels[0]), (float(scores[0, 0]),))


def test_wire_dtypes_are_decoded_as_declared(tmp_path: Path) -> None:
    model = regression_model()
    artifact = _artifact(tmp_path, model)
    inputs = SignedInput(artifact)
    x = model.X[0]
    body = unpack_body(pack_body(encode_tensor(x, "int8")))
    inputs.check_input(body.dtype, body.shape)
    decoded = decode_tensor(body, dequantise=True)  # how admission decodes a signed model's bodies
    assert decoded.dtype == np.float32
    assert body.scale is not None
    np.testing.assert_allclose(decoded, x, atol=body.scale / 2 + 1e-6)
    for refused in (encode_tensor(x, "float16"), encode_tensor(x[:-1], "float32")):
        with pytest.raises(ShapeMismatch, match=r"takes float32/int8 items of shape \(8,\)") as info:
            inputs.check_input(refused.dtype, refused.shape)
        assert info.value.reason == "bad_shape"


def test_named_outputs_are_written_under_their_names(tmp_path: Path) -> None:
    model = named_model()
    session = SignedSession(_artifact(tmp_path, model))
    session.warm_up()
    frames = model.X.astype(np.uint8)  # a uint8 wire body, cast to the graph's float32
    labels, scores = session.run(frames)
    double, total = _direct(model, frames.astype(np.float32))
    assert labels.tolist() == [NO_LABEL] * len(frames)
    label, out, typed = session.typed_result(int(labels[1]), tuple(scores[1].tolist()))
    assert (label, out, typed.kind) == (NO_LABEL, (), "named")
    assert typed.named == {"double": tuple(double[1].tolist()), "total": tuple(total[1].tolist())}


def test_a_vector_is_its_scores(tmp_path: Path) -> None:
    model = named_model()
    as_vector = UserModel(
        model.onnx, {**model.signature, "outputs": {"kind": "vector", "name": "double"}}, model.X
    )
    # The graph's other output is undeclared: the graph check refuses it, but the session itself
    # reads only what the signature names.
    session = SignedSession(_artifact(tmp_path, as_vector))
    labels, scores = session.run(model.X)
    np.testing.assert_array_equal(scores, model.X * 2)
    assert set(labels.tolist()) == {NO_LABEL}
    assert session.typed_result(NO_LABEL, (1.0, 2.0)) == (NO_LABEL, (1.0, 2.0), TypedResult("vector"))


def test_an_empty_batch_and_a_changed_file(tmp_path: Path) -> None:
    model = fraud_model()
    artifact = _artifact(tmp_path, model)
    labels, scores = SignedSession(artifact).run(np.empty((0, FEATURES), np.float32))
    assert labels.shape == (0,)
    assert len(scores) == 0
    artifact.path.write_bytes(model.onnx + b"\0")
    with pytest.raises(ConfigError, match="does not hash"):
        SignedSession(artifact)
