"""Small user models (not the zoo) for the signature tests: a gradient-boosted fraud classifier and a
linear regressor exported with skl2onnx, and a two-output graph made with ``onnx.helper``.

skl2onnx is an optional tool (extra ``tools``): the helpers skip the calling test when it is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pytest

FEATURES: Final = 8
"""Features of a transaction in these tests."""
FRAUD_CLASSES: Final = ("legit", "fraud")
"""The fraud model's class names, in label order."""


@dataclass(frozen=True)
class UserModel:
    """An exported user model, its signature (as a file would hold it) and inputs to try it on."""

    onnx: bytes
    signature: dict[str, Any]
    X: npt.NDArray[np.float32]


def _skl2onnx() -> Any:
    return pytest.importorskip("skl2onnx", reason="skl2onnx (extra 'tools') exports the user models")


def fraud_model(n: int = 2000, seed: int = 0) -> UserModel:
    """A GradientBoostingClassifier on make_classification data with ~1% positives, exported with
    probabilities as a tensor (no ZipMap)."""
    skl2onnx = _skl2onnx()
    from sklearn.datasets import make_classification
    from sklearn.ensemble import GradientBoostingClassifier

    X, y = make_classification(
        n_samples=n, n_features=FEATURES, n_informative=5, weights=[0.99], flip_y=0.0, random_state=seed
    )
    X = X.astype(np.float32)
    model = GradientBoostingClassifier(n_estimators=20, max_depth=3, random_state=seed).fit(X, y)
    onx = skl2onnx.to_onnx(model, X[:1], options={id(model): {"zipmap": False}}, target_opset=17)
    signature = {
        "input": {"name": "X", "dtype": "float32", "shape": [None, FEATURES], "wire": ["float32", "float16"]},
        "outputs": {
            "kind": "classification",
            "label": "label",
            "probabilities": "probabilities",
            "classes": list(FRAUD_CLASSES),
        },
    }
    return UserModel(onx.SerializeToString(), signature, X)


def regression_model(n: int = 300, seed: int = 1) -> UserModel:
    """A linear regression exported with skl2onnx (output ``variable`` [N, 1]); inputs are normalised
    at the edge by the signature, so the graph sees standardised features."""
    skl2onnx = _skl2onnx()
    from sklearn.datasets import make_regression
    from sklearn.linear_model import LinearRegression

    X, y = make_regression(n_samples=n, n_features=FEATURES, noise=0.1, random_state=seed)
    X = (X * 3.0 + 5.0).astype(np.float32)
    mean, std = X.mean(axis=0), X.std(axis=0)
    model = LinearRegression().fit((X - mean) / std, y)
    onx = skl2onnx.to_onnx(model, X[:1], target_opset=17)
    signature = {
        "input": {
            "name": "X",
            "dtype": "float32",
            "shape": [-1, FEATURES],
            "wire": ["float32", "int8"],
            "normalise": {"mean": [float(m) for m in mean], "std": [float(s) for s in std]},
        },
        "outputs": {"kind": "score", "name": "variable", "threshold": 0.0},
    }
    return UserModel(onx.SerializeToString(), signature, X)


def named_model() -> UserModel:
    """A graph with two outputs: ``double`` (x * 2, [N, F]) and ``total`` (sum of x, [N, 1])."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, FEATURES])
    double = helper.make_tensor_value_info("double", TensorProto.FLOAT, [None, FEATURES])
    total = helper.make_tensor_value_info("total", TensorProto.FLOAT, [None, 1])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["double"]),
        helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=1),
    ]
    graph = helper.make_graph(nodes, "named", [x], [double, total], initializer=[two, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    signature = {
        "input": {"name": "x", "dtype": "float32", "shape": [None, FEATURES], "wire": ["float32", "uint8"]},
        "outputs": {"kind": "named", "outputs": ["double", "total"]},
    }
    X = np.arange(4 * FEATURES, dtype=np.float32).reshape(4, FEATURES)
    return UserModel(model.SerializeToString(), signature, X)
