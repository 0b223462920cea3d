"""A ResNet-50-shaped ONNX graph with random weights: the compute of a real vision model, for timing.

The zoo's models are tiny (microseconds a batch), so they say nothing about a GPU; this one has
ResNet-50's layers, FLOPs (about 4.1 G multiply-adds per item) and parameter count (about 25.6 M),
built node by node with ``onnx.helper`` from seeded random weights, so its answers mean nothing and no
download is needed. Same interface as the zoo's graphs::

    input uint8 [N,224,224,3] (HWC, as a camera gives it) -> Cast -> Transpose to NCHW -> Sub -> Mul
    -> Conv 7x7/2 (64) -> BatchNormalization -> Relu -> MaxPool 3x3/2
    -> 4 stages of bottleneck blocks (3, 4, 6, 3; widths 64, 128, 256, 512, expansion 4; the stride
       on the 3x3 convolution, as in ResNet-50 v1.5), each 1x1 -> 3x3 -> 1x1 Conv/BN (Relu between)
       plus its shortcut (a 1x1 Conv/BN where the shape changes), Add, Relu
    -> GlobalAveragePool -> Flatten -> Gemm (1000) -> Softmax -> probs float32 [N,1000]
                                                 -> ArgMax  -> label int64 [N]

The last BatchNormalization of each block scales by 0.25, so activations stay in float16's range
through all 16 blocks (TensorRT FP16 runs it without overflow).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgestream.pipeline.models.build import IR_VERSION, OPSET

RESNET50_BLOCKS = (3, 4, 6, 3)
"""Bottleneck blocks per stage of ResNet-50."""
IMAGE_SHAPE = (224, 224, 3)
"""One input item: height, width, channels (uint8)."""
CLASSES = 1000
"""Width of ``probs``: ImageNet's class count."""
SEED = 0
"""Seed of the random weights: every build of a shape gives the same bytes."""
_EXPANSION = 4
_RESIDUAL_SCALE = 0.25


@dataclass
class _Graph:
    """Nodes and initializers being collected, with the random source of the weights."""

    rng: np.random.Generator
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def conv_bn(
        self, x: str, name: str, channels: tuple[int, int], kernel: int, stride: int, gamma: float = 1.0
    ) -> str:
        """Conv (He-initialised, no bias) then BatchNormalization; the normalised output's name."""
        c_in, c_out = channels
        std = np.sqrt(2.0 / (c_in * kernel * kernel))
        weight = self.rng.standard_normal((c_out, c_in, kernel, kernel), dtype=np.float32) * std
        pad = kernel // 2
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, self.const(f"{name}.w", weight)],
                [f"{name}.conv"],
                name=f"{name}.conv",
                kernel_shape=[kernel, kernel],
                strides=[stride, stride],
                pads=[pad, pad, pad, pad],
            )
        )
        bn = [
            self.const(f"{name}.{part}", np.full(c_out, value, dtype=np.float32))
            for part, value in (("gamma", gamma), ("beta", 0.0), ("mean", 0.0), ("var", 1.0))
        ]
        self.nodes.append(
            helper.make_node(
                "BatchNormalization", [f"{name}.conv", *bn], [f"{name}.bn"], name=f"{name}.bn", epsilon=1e-5
            )
        )
        return f"{name}.bn"

    def relu(self, x: str) -> str:
        self.nodes.append(helper.make_node("Relu", [x], [f"{x}.relu"], name=f"{x}.relu"))
        return f"{x}.relu"

    def bottleneck(self, x: str, name: str, c_in: int, width: int, stride: int) -> str:
        """One block: 1x1 -> 3x3 (stride) -> 1x1 (x4 channels), plus the shortcut, Add, Relu."""
        c_out = width * _EXPANSION
        h = self.relu(self.conv_bn(x, f"{name}.a", (c_in, width), 1, 1))
        h = self.relu(self.conv_bn(h, f"{name}.b", (width, width), 3, stride))
        h = self.conv_bn(h, f"{name}.c", (width, c_out), 1, 1, gamma=_RESIDUAL_SCALE)
        shortcut = x
        if stride != 1 or c_in != c_out:
            shortcut = self.conv_bn(x, f"{name}.down", (c_in, c_out), 1, stride)
        self.nodes.append(helper.make_node("Add", [h, shortcut], [f"{name}.sum"], name=f"{name}.add"))
        return self.relu(f"{name}.sum")


def resnet_graph(
    blocks: Sequence[int] = RESNET50_BLOCKS, *, base_width: int = 64, classes: int = CLASSES, seed: int = SEED
) -> onnx.ModelProto:
    """The graph described above: ResNet-50 with the defaults; fewer ``blocks`` or a smaller
    ``base_width`` give a cheaper graph of the same interface (the tests build one)."""
    g = _Graph(np.random.default_rng(seed))
    mean = np.full((1, 3, 1, 1), 127.5, dtype=np.float32)
    inv_std = np.full((1, 3, 1, 1), 1 / 64.0, dtype=np.float32)
    g.nodes += [
        helper.make_node("Cast", ["input"], ["x.float"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["x.float"], ["x.nchw"], name="to_nchw", perm=[0, 3, 1, 2]),
        helper.make_node("Sub", ["x.nchw", g.const("mean", mean)], ["x.centred"], name="centre"),
        helper.make_node("Mul", ["x.centred", g.const("inv_std", inv_std)], ["x.scaled"], name="scale"),
    ]
    h = g.relu(g.conv_bn("x.scaled", "stem", (3, base_width), 7, 2))
    g.nodes.append(
        helper.make_node(
            "MaxPool", [h], ["stem.pool"], name="stem.pool", kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4
        )
    )
    h, channels = "stem.pool", base_width
    for stage, count in enumerate(blocks):
        width = base_width * 2**stage
        for block in range(count):
            stride = 2 if block == 0 and stage > 0 else 1
            h = g.bottleneck(h, f"s{stage}.b{block}", channels, width, stride)
            channels = width * _EXPANSION
    fc = g.rng.standard_normal((channels, classes), dtype=np.float32) / np.sqrt(channels)
    g.nodes += [
        helper.make_node("GlobalAveragePool", [h], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["features"], name="flatten", axis=1),
        helper.make_node(
            "Gemm",
            ["features", g.const("fc.w", fc), g.const("fc.b", np.zeros(classes))],
            ["logits"],
            name="fc",
        ),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1),
        helper.make_node("ArgMax", ["probs"], ["label"], name="argmax", axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        g.nodes,
        f"resnet-{'-'.join(map(str, blocks))}-w{base_width}",
        inputs=[helper.make_tensor_value_info("input", TensorProto.UINT8, ["batch", *IMAGE_SHAPE])],
        outputs=[
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", classes]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        initializer=g.initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgestream"
    )
    model.ir_version = IR_VERSION
    return model


def parameter_count(model: onnx.ModelProto) -> int:
    """Learned parameters of ``model``: convolution and dense weights and biases, BatchNormalization's
    scale and shift (its running mean and variance are statistics, not parameters)."""
    return sum(
        int(np.prod(tensor.dims))
        for tensor in model.graph.initializer
        if not tensor.name.endswith((".mean", ".var")) and tensor.name not in ("mean", "inv_std")
    )
