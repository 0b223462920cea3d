"""Reference models: zoo specs, datasets, training + ONNX export, and the on-disk cache."""

from __future__ import annotations

import json
import logging
import threading
from typing import TYPE_CHECKING

import numpy as np
import onnx
import pytest

from edgestream.pipeline.errors import ShapeMismatch, UnknownModel
from edgestream.pipeline.models import FAMILIES, SIZES, SPECS, ModelArtifact, ModelStore, load_dataset, spec
from edgestream.pipeline.models import build as build_module
from edgestream.pipeline.models.data import TEST_FRACTION
from edgestream.pipeline.serving.inference import InferenceSession

if TYPE_CHECKING:
    from pathlib import Path

    from edgestream.pipeline.models.zoo import Kind

ALL_MODELS = [(name, size) for name in FAMILIES for size in SIZES]

# Measured held-out accuracy (ONNX == scikit-learn) at the time of writing:
#   embedding-scorer tiny 0.9790, medium 0.9650, full 0.9650   (143 test rows; one row = 0.0070)
#   frame-classifier tiny 0.9644, medium 0.9800, full 0.9867   (450 test rows; one row = 0.0022)
# The floors sit two to four rows under those numbers.
ACCURACY_FLOORS = {
    ("embedding-scorer", "tiny"): 0.95,
    ("embedding-scorer", "medium"): 0.94,
    ("embedding-scorer", "full"): 0.94,
    ("frame-classifier", "tiny"): 0.95,
    ("frame-classifier", "medium"): 0.96,
    ("frame-classifier", "full"): 0.97,
}


@pytest.fixture(scope="session")
def built_store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """Every model built once per test session into a temporary root (a few seconds)."""
    store = ModelStore(tmp_path_factory.mktemp("models"))
    for name, size in ALL_MODELS:
        store.get(name, size)
    return store


# -- zoo --------------------------------------------------------------------------------------------


def test_registry_has_every_family_and_size() -> None:
    assert set(SPECS) == set(ALL_MODELS)
    assert spec("embedding-scorer").size == "medium"
    assert spec("frame-classifier", "tiny").is_fallback
    assert spec("embedding-scorer", "full").hidden_units == (256, 128)
    assert spec("embedding-scorer", "tiny").hidden_units == ()


@pytest.mark.parametrize(("name", "size"), [("no-such-model", "medium"), ("embedding-scorer", "huge")])
def test_spec_of_unknown_model_raises(name: str, size: str) -> None:
    with pytest.raises(UnknownModel):
        spec(name, size)


def test_check_input_accepts_the_spec() -> None:
    spec("embedding-scorer").check_input("float16", (30,))
    spec("frame-classifier").check_input("uint8", (32, 32))


@pytest.mark.parametrize(
    ("name", "dtype", "shape"),
    [
        ("embedding-scorer", "float32", (30,)),
        ("embedding-scorer", "float16", (31,)),
        ("embedding-scorer", "float16", (1, 30)),
        ("embedding-scorer", "float16", ()),
        ("frame-classifier", "int8", (32, 32)),
        ("frame-classifier", "uint8", (8, 8)),
        ("frame-classifier", "uint8", (1024,)),
    ],
)
def test_check_input_rejects_wrong_dtype_or_shape(name: str, dtype: str, shape: tuple[int, ...]) -> None:
    with pytest.raises(ShapeMismatch, match=name):
        spec(name).check_input(dtype, shape)


# -- data -------------------------------------------------------------------------------------------


def test_embedding_dataset_is_float16_and_faithful() -> None:
    data = load_dataset("embedding")
    assert data.X_train.dtype == np.float16
    assert data.X_test.dtype == np.float16
    assert data.X_train.shape[1:] == spec("embedding-scorer").input_shape
    assert data.class_names == spec("embedding-scorer").class_names
    assert np.isfinite(data.X_train).all()
    assert np.isfinite(data.X_test).all()
    from sklearn.datasets import load_breast_cancer

    source = np.asarray(load_breast_cancer().data)
    rounded = source.astype(np.float16).astype(np.float64)
    assert np.max(np.abs(rounded - source) / np.maximum(np.abs(source), 1e-12)) < 1e-3


def test_frames_are_upscaled_uint8_digits() -> None:
    data = load_dataset("frame")
    assert data.X_test.dtype == np.uint8
    assert data.X_test.shape[1:] == (32, 32)
    assert data.class_names == spec("frame-classifier").class_names
    assert int(data.X_train.max()) == 255
    blocks = data.X_test.reshape(-1, 8, 4, 8, 4)
    assert (blocks == blocks[:, :, :1, :, :1]).all(), "every 4x4 block is one digit pixel"


@pytest.mark.parametrize("kind", ["embedding", "frame"])
def test_split_is_stratified_deterministic_and_read_only(kind: Kind) -> None:
    data = load_dataset(kind)
    n_total = len(data.y_train) + len(data.y_test)
    assert abs(len(data.y_test) - TEST_FRACTION * n_total) <= 1
    train_share = np.bincount(data.y_train) / len(data.y_train)
    test_share = np.bincount(data.y_test) / len(data.y_test)
    assert np.max(np.abs(train_share - test_share)) < 0.01
    assert not data.X_test.flags.writeable
    from edgestream.pipeline.models import data as data_module

    data_module._load.cache_clear()
    again = load_dataset(data.kind)
    assert again is not data
    assert np.array_equal(again.X_test, data.X_test)
    assert np.array_equal(again.y_test, data.y_test)


# -- build and export -------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "size"), ALL_MODELS)
def test_onnx_accuracy_matches_sklearn_and_meets_floor(built_store: ModelStore, name: str, size: str) -> None:
    artifact = built_store.get(name, size)
    manifest = json.loads(artifact.manifest_path.read_text())
    n_test = manifest["n_test"]
    assert abs(artifact.accuracy - artifact.sklearn_accuracy) * n_test <= 1 + 1e-9
    assert artifact.accuracy >= ACCURACY_FLOORS[(name, size)]
    assert manifest["converged"] is True

    # Independent of the manifest: run the exported file through our session on the held-out split.
    data = load_dataset(artifact.spec.kind)
    labels, probs = InferenceSession(artifact).run(data.X_test)
    assert float(np.mean(labels == data.y_test)) == pytest.approx(artifact.accuracy)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(("name", "size"), ALL_MODELS)
def test_graph_interface(built_store: ModelStore, name: str, size: str) -> None:
    artifact = built_store.get(name, size)
    model = onnx.load(str(artifact.path))
    onnx.checker.check_model(model)
    assert {opset.domain: opset.version for opset in model.opset_import} == {"": 17}
    (graph_input,) = model.graph.input
    assert graph_input.name == "input"
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param, "batch dimension is dynamic"
    assert tuple(dim.dim_value for dim in dims[1:]) == artifact.spec.input_shape
    expected_elem = onnx.TensorProto.FLOAT16 if name == "embedding-scorer" else onnx.TensorProto.UINT8
    assert graph_input.type.tensor_type.elem_type == expected_elem
    outputs = {output.name: output.type.tensor_type.elem_type for output in model.graph.output}
    assert outputs == {"probs": onnx.TensorProto.FLOAT, "label": onnx.TensorProto.INT64}
    gemms = [node for node in model.graph.node if node.op_type == "Gemm"]
    assert len(gemms) == len(artifact.spec.hidden_units) + 1


def test_manifest_fields(built_store: ModelStore) -> None:
    artifact = built_store.get("frame-classifier", "medium")
    manifest = json.loads(artifact.manifest_path.read_text())
    assert manifest["name"] == "frame-classifier"
    assert manifest["size"] == "medium"
    assert manifest["version"] == 1 == artifact.version
    assert manifest["sha256"] == artifact.sha256
    assert manifest["input"] == {"name": "input", "dtype": "uint8", "shape": [None, 32, 32]}
    assert manifest["n_train"] + manifest["n_test"] == 1797
    assert manifest["accuracy"] == artifact.accuracy
    assert manifest["sklearn_accuracy"] == artifact.sklearn_accuracy
    assert manifest["created_at"].endswith("+00:00")
    assert artifact.path == built_store.root / "frame-classifier" / "medium" / "v1" / "model.onnx"


# -- cache ------------------------------------------------------------------------------------------


def test_cache_hit_does_not_rebuild(built_store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
    first = built_store.get("embedding-scorer", "medium")
    mtime_ns = first.path.stat().st_mtime_ns
    manifest_mtime_ns = first.manifest_path.stat().st_mtime_ns

    def no_build(*args: object) -> ModelArtifact:
        raise AssertionError("a cache hit must not build")

    monkeypatch.setattr(build_module, "build_model", no_build)
    again = ModelStore(built_store.root).get("embedding-scorer", "medium")
    assert again == first
    assert again.path.stat().st_mtime_ns == mtime_ns
    assert again.manifest_path.stat().st_mtime_ns == manifest_mtime_ns


def test_corrupted_model_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = ModelStore(tmp_path)
    original = store.get("embedding-scorer", "tiny")
    original.path.write_bytes(original.path.read_bytes()[:-7] + b"garbage")
    assert store.cached("embedding-scorer", "tiny") is None

    with caplog.at_level(logging.WARNING, logger="edgestream.pipeline.models.cache"):
        rebuilt = store.get("embedding-scorer", "tiny")
    assert "does not match manifest" in caplog.text
    assert rebuilt.sha256 == original.sha256, "training and export are deterministic"
    assert store.cached("embedding-scorer", "tiny") == rebuilt


def test_unreadable_manifest_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = ModelStore(tmp_path)
    original = store.get("frame-classifier", "tiny")
    original.manifest_path.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="edgestream.pipeline.models.cache"):
        rebuilt = store.get("frame-classifier", "tiny")
    assert "rebuilding frame-classifier/tiny" in caplog.text
    assert rebuilt.sha256 == original.sha256


def test_rebuild_flag_rewrites(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    first = store.get("embedding-scorer", "tiny")
    inode = first.path.stat().st_ino
    again = store.get("embedding-scorer", "tiny", rebuild=True)
    assert again.path.stat().st_ino != inode, "rebuilt through a temp file and os.replace"
    assert again.sha256 == first.sha256


def test_concurrent_builders_leave_a_valid_cache(tmp_path: Path) -> None:
    results: list[ModelArtifact] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            results.append(ModelStore(tmp_path).get("embedding-scorer", "tiny", rebuild=True))
        except BaseException as e:  # collected and re-raised by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len({artifact.sha256 for artifact in results}) == 1
    assert ModelStore(tmp_path).cached("embedding-scorer", "tiny") == results[0]
    leftovers = [path.name for path in results[0].path.parent.iterdir() if path.name.endswith(".tmp")]
    assert leftovers == []
