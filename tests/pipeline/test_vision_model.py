"""The ResNet-50-shaped bench graph: ResNet-50's layers and parameters, the zoo's interface, and
onnxruntime on the CPU runs it (a reduced-depth variant; the full one is only built and counted)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgestream.pipeline.models.vision import CLASSES, IMAGE_SHAPE, parameter_count, resnet_graph
from edgestream.pipeline.serving.inference import OUTPUTS
from edgestream.pipeline.serving.runtime import ort

REDUCED_BLOCKS = (1, 1, 1, 1)
REDUCED_WIDTH = 8


@pytest.fixture(scope="module")
def reduced() -> onnx.ModelProto:
    return resnet_graph(REDUCED_BLOCKS, base_width=REDUCED_WIDTH)


def test_the_full_graph_has_resnet50s_layers_and_parameters() -> None:
    model = resnet_graph()
    onnx.checker.check_model(model)
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("Conv") == 53  # stem + 16 blocks x 3 + 4 projection shortcuts
    assert ops.count("BatchNormalization") == 53
    assert ops.count("Add") == 16
    assert parameter_count(model) == 25_557_032  # torchvision's resnet50, conv + BN affine + fc


def test_onnxruntime_runs_the_reduced_graph_on_the_cpu(reduced: onnx.ModelProto) -> None:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(reduced.SerializeToString(), options, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert session.get_inputs()[0].type == "tensor(uint8)"
    images = np.random.default_rng(3).integers(0, 256, (5, *IMAGE_SHAPE), dtype=np.uint8)
    labels, probs = session.run(list(OUTPUTS), {"input": images})
    assert labels.shape == (5,)
    assert labels.dtype == np.int64
    assert probs.shape == (5, CLASSES)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(labels, probs.argmax(axis=1))
    one_label, one_probs = session.run(list(OUTPUTS), {"input": images[2:3]})
    np.testing.assert_allclose(one_probs[0], probs[2], rtol=1e-4, atol=1e-6)
    assert one_label[0] == labels[2]


def test_builds_are_deterministic_per_seed(reduced: onnx.ModelProto) -> None:
    again = resnet_graph(REDUCED_BLOCKS, base_width=REDUCED_WIDTH)
    assert again.SerializeToString() == reduced.SerializeToString()
    other = resnet_graph(REDUCED_BLOCKS, base_width=REDUCED_WIDTH, seed=1)
    assert other.SerializeToString() != reduced.SerializeToString()
