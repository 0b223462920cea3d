"""Train a reference model with scikit-learn and export its learned weights as an ONNX graph.

The graph is written node by node with ``onnx.helper`` (no converter package): the preprocessing a
device must not do itself is baked in, so the edge feeds the wire tensor straight in::

    embedding: input float16 [N,30] -> Cast -> Sub(mean) -> Div(std) -> Gemm (-> Relu -> Gemm)* -> Softmax
    frame:     input uint8 [N,32,32] -> Cast -> Unsqueeze -> AveragePool 4x4/4 -> Flatten [N,64]
               -> Sub(mean) -> Div(std) -> Gemm (-> Relu -> Gemm)* -> Softmax

Outputs: ``probs`` float32 [N,C] and ``label`` int64 [N] (ArgMax). A binary scikit-learn model has one
output logit z; the graph gives it a zero logit for class 0, so Softmax([0, z]) = [1 - sigmoid(z),
sigmoid(z)], which is exactly ``predict_proba``. Accuracy is measured by running the exported bytes
with onnxruntime on the held-out split, beside scikit-learn's own score for comparison.
"""

from __future__ import annotations

import logging
import time
import warnings
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import onnx
import sklearn
from onnx import TensorProto, helper, numpy_helper
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

from edgestream.pipeline.files import sha256_hex
from edgestream.pipeline.models.cache import (
    MODEL_VERSION,
    ModelArtifact,
    input_manifest,
    read_artifact,
    write_artifact,
)
from edgestream.pipeline.models.data import FRAME_UPSCALE, load_dataset
from edgestream.pipeline.models.zoo import ModelSpec, spec
from edgestream.pipeline.serving.providers import CPU
from edgestream.pipeline.serving.runtime import ort

if TYPE_CHECKING:
    from pathlib import Path

log = logging.getLogger(__name__)

OPSET = 17
"""ONNX default-domain opset of every exported graph."""
IR_VERSION = 8
"""ONNX IR version matching opset 17, so older onnxruntime builds load the files too."""
TRAIN_SEED = 0
"""``random_state`` of every estimator: builds are reproducible."""

FloatArray = npt.NDArray[np.float32]
Layer = tuple[FloatArray, FloatArray]
"""One dense layer as exported: weights ``[in, out]`` and bias ``[out]``."""

_ONNX_DTYPES = {"float16": TensorProto.FLOAT16, "uint8": TensorProto.UINT8}


def build_model(name: str, size: str, out_dir: Path) -> ModelArtifact:
    """Train ``name``/``size``, export it, measure it and write ``model.onnx`` + ``manifest.json``.

    Raises :class:`UnknownModel` for a name or size the zoo does not have.
    """
    model_spec = spec(name, size)
    started_s = time.perf_counter()
    data = load_dataset(model_spec.kind)
    features_train = features(model_spec, data.X_train)
    mean, std = _standardiser(features_train)
    z_train = (features_train - mean) / std
    z_test = (features(model_spec, data.X_test) - mean) / std

    estimator, converged = _train(model_spec, z_train, data.y_train)
    sklearn_accuracy = float(estimator.score(z_test, data.y_test))
    graph = export_onnx(model_spec, mean, std, _layers(model_spec, estimator))
    onnx_bytes = graph.SerializeToString()

    labels, probs = _run_onnx(onnx_bytes, data.X_test)
    accuracy = float(np.mean(labels == data.y_test))
    disagreements = int(np.sum(labels != estimator.predict(z_test)))
    max_prob_diff = float(np.max(np.abs(probs - estimator.predict_proba(z_test))))
    build_s = time.perf_counter() - started_s
    manifest: dict[str, Any] = {
        "name": model_spec.name,
        "size": model_spec.size,
        "version": MODEL_VERSION,
        "sha256": sha256_hex(onnx_bytes),
        "onnx_bytes": len(onnx_bytes),
        "accuracy": accuracy,
        "sklearn_accuracy": sklearn_accuracy,
        "onnx_sklearn_disagreements": disagreements,
        "onnx_sklearn_max_prob_diff": max_prob_diff,
        "n_train": len(data.y_train),
        "n_test": len(data.y_test),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "build_s": round(build_s, 3),
        "input": input_manifest(model_spec),
        "outputs": {"probs": ["float32", [None, model_spec.n_classes]], "label": ["int64", [None]]},
        "class_names": list(model_spec.class_names),
        "estimator": _describe(estimator),
        "converged": converged,
        "opset": OPSET,
        "libraries": {
            "scikit-learn": sklearn.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
        },
    }
    write_artifact(out_dir, onnx_bytes, manifest)
    log.info(
        "built %s/%s in %.2f s: accuracy onnx %.4f, sklearn %.4f, %d bytes",
        name,
        size,
        build_s,
        accuracy,
        sklearn_accuracy,
        len(onnx_bytes),
    )
    return read_artifact(out_dir, model_spec)


def features(model_spec: ModelSpec, items: npt.NDArray[np.generic]) -> FloatArray:
    """The float32 features the graph computes before standardising, done in numpy.

    Embeddings: the float16 vector cast to float32. Frames: the mean of each 4x4 block, which gives
    back the 8x8 digit exactly.
    """
    values = np.asarray(items).astype(np.float32)
    if model_spec.kind == "embedding":
        return values.reshape(len(values), -1)
    height, width = model_spec.input_shape
    pooled: FloatArray = values.reshape(
        len(values), height // FRAME_UPSCALE, FRAME_UPSCALE, width // FRAME_UPSCALE, FRAME_UPSCALE
    ).mean(axis=(2, 4), dtype=np.float32)
    return pooled.reshape(len(values), -1)


def export_onnx(
    model_spec: ModelSpec, mean: FloatArray, std: FloatArray, layers: list[Layer]
) -> onnx.ModelProto:
    """The ONNX graph of ``model_spec``: preprocessing, the dense ``layers`` (ReLU between), Softmax."""
    nodes: list[onnx.NodeProto] = [
        helper.make_node("Cast", ["input"], ["x"], name="cast", to=TensorProto.FLOAT)
    ]
    initializers = [numpy_helper.from_array(mean, "mean"), numpy_helper.from_array(std, "std")]
    features_name = "x"
    if model_spec.kind == "frame":
        initializers.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "channel_axis"))
        nodes += [
            helper.make_node("Unsqueeze", ["x", "channel_axis"], ["x_nchw"], name="add_channel"),
            helper.make_node(
                "AveragePool",
                ["x_nchw"],
                ["x_pooled"],
                name="pool",
                kernel_shape=[FRAME_UPSCALE, FRAME_UPSCALE],
                strides=[FRAME_UPSCALE, FRAME_UPSCALE],
            ),
            helper.make_node("Flatten", ["x_pooled"], ["x_flat"], name="flatten", axis=1),
        ]
        features_name = "x_flat"
    nodes += [
        helper.make_node("Sub", [features_name, "mean"], ["x_centred"], name="standardise_sub"),
        helper.make_node("Div", ["x_centred", "std"], ["h0"], name="standardise_div"),
    ]
    hidden = "h0"
    for index, (weights, bias) in enumerate(layers):
        initializers += [
            numpy_helper.from_array(weights, f"w{index}"),
            numpy_helper.from_array(bias, f"b{index}"),
        ]
        is_last = index == len(layers) - 1
        dense_out = "logits" if is_last else f"dense{index}"
        nodes.append(
            helper.make_node("Gemm", [hidden, f"w{index}", f"b{index}"], [dense_out], name=f"gemm{index}")
        )
        if not is_last:
            hidden = f"h{index + 1}"
            nodes.append(helper.make_node("Relu", [dense_out], [hidden], name=f"relu{index}"))
    nodes += [
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1),
        helper.make_node("ArgMax", ["probs"], ["label"], name="argmax", axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        f"{model_spec.name}-{model_spec.size}",
        inputs=[
            helper.make_tensor_value_info(
                "input", _ONNX_DTYPES[model_spec.input_dtype], ["batch", *model_spec.input_shape]
            )
        ],
        outputs=[
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", model_spec.n_classes]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edgestream",
        producer_version=str(MODEL_VERSION),
        doc_string=f"edgestream reference model {model_spec.name}/{model_spec.size} v{MODEL_VERSION}",
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(
        model,
        {
            "edgestream.name": model_spec.name,
            "edgestream.size": model_spec.size,
            "edgestream.version": str(MODEL_VERSION),
            "edgestream.class_names": ",".join(model_spec.class_names),
        },
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def _standardiser(train_features: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Per-feature training mean and std (float32); a constant feature gets std 1, like StandardScaler."""
    mean = train_features.mean(axis=0, dtype=np.float64)
    std = train_features.std(axis=0, dtype=np.float64)
    std[std == 0.0] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def _train(
    model_spec: ModelSpec, z_train: FloatArray, y_train: npt.NDArray[np.int64]
) -> tuple[LogisticRegression | MLPClassifier, bool]:
    """Fit the estimator of ``model_spec``; the flag is False when scikit-learn reports non-convergence."""
    estimator: LogisticRegression | MLPClassifier
    if model_spec.hidden_units:
        estimator = MLPClassifier(
            hidden_layer_sizes=model_spec.hidden_units, max_iter=1000, random_state=TRAIN_SEED
        )
    else:
        estimator = LogisticRegression(max_iter=2000, random_state=TRAIN_SEED)
    # One BLAS thread: these matrices are small, and on a box shared with a broker two spinning BLAS
    # threads have been measured to turn a one-second fit into fifteen.
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(limits=1):
        warnings.simplefilter("always", ConvergenceWarning)
        estimator.fit(z_train, y_train)
    converged = True
    for warning in caught:
        if issubclass(warning.category, ConvergenceWarning):
            converged = False
            log.warning("%s/%s did not converge: %s", model_spec.name, model_spec.size, warning.message)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return estimator, converged


def _layers(model_spec: ModelSpec, estimator: LogisticRegression | MLPClassifier) -> list[Layer]:
    """The estimator's dense layers as ``(weights [in, out], bias [out])``, float32.

    A binary model's single output logit becomes two columns ``[0, z]`` so Softmax yields
    ``predict_proba``.
    """
    if isinstance(estimator, MLPClassifier):
        if estimator.activation != "relu":
            raise ValueError(f"only relu MLPs are exported, not {estimator.activation}")
        pairs = list(zip(estimator.coefs_, estimator.intercepts_, strict=True))
    else:
        pairs = [(estimator.coef_.T, estimator.intercept_)]
    layers = [(np.asarray(w, dtype=np.float32), np.asarray(b, dtype=np.float32)) for w, b in pairs]
    weights, bias = layers[-1]
    if weights.shape[1] == 1 and model_spec.n_classes == 2:
        layers[-1] = (
            np.concatenate([np.zeros_like(weights), weights], axis=1),
            np.concatenate([np.zeros_like(bias), bias]),
        )
    if layers[-1][0].shape[1] != model_spec.n_classes:
        raise ValueError(
            f"{model_spec.name}: {layers[-1][0].shape[1]} outputs for {model_spec.n_classes} classes"
        )
    return layers


def _run_onnx(
    onnx_bytes: bytes, items: npt.NDArray[np.generic]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Run the serialised graph on ``items`` with onnxruntime on the CPU: ``(labels, probs)``."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes, sess_options=options, providers=[CPU])
    labels, probs = session.run(["label", "probs"], {"input": np.ascontiguousarray(items)})
    return np.asarray(labels, dtype=np.int64), np.asarray(probs, dtype=np.float32)


def _describe(estimator: LogisticRegression | MLPClassifier) -> str:
    if isinstance(estimator, MLPClassifier):
        return f"MLPClassifier(hidden_layer_sizes={estimator.hidden_layer_sizes}, n_iter={estimator.n_iter_})"
    return f"LogisticRegression(n_iter={int(np.max(estimator.n_iter_))})"
