"""Check a :class:`ModelSignature` against the ONNX graph it describes: the exact differences.

Two passes. First the graph's declared interface, read through onnxruntime (``get_inputs``,
``get_outputs``): the signature's input exists with its dtype and shape, the graph needs no other input,
every output the signature reads exists as a tensor of a fitting type, and the graph has no output the
signature does not declare. Then, when the interface agrees, one probe run on a batch of two zero items:
each output the signature reads holds one row per item, a classification's probabilities one column
per class and its label one value per item, a score one value per item. Each difference is one line
naming the input or output, what the signature says and what the graph has.

:func:`check_graph` raises :class:`SignatureMismatch` with them; ``registry publish`` calls it before it
signs anything and the worker's loader again before it serves a version.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np

from edgestream.pipeline.errors import ConfigError
from edgestream.pipeline.models.signature import Classification, ModelSignature, Score
from edgestream.pipeline.registry.errors import SignatureMismatch

ORT_TYPES: Final = {
    "float32": "tensor(float)",
    "float16": "tensor(float16)",
    "float64": "tensor(double)",
    "int8": "tensor(int8)",
    "uint8": "tensor(uint8)",
    "int32": "tensor(int32)",
    "int64": "tensor(int64)",
}
"""Graph dtype names -> onnxruntime's type strings."""
FLOAT_TYPES: Final = frozenset({"tensor(float)", "tensor(float16)", "tensor(double)"})
"""Outputs that may carry probabilities and scores."""
INTEGER_TYPES: Final = frozenset({"tensor(int64)", "tensor(int32)"})
"""Outputs that may carry class labels."""
NUMERIC_TYPES: Final = FLOAT_TYPES | INTEGER_TYPES | {"tensor(int8)", "tensor(uint8)", "tensor(bool)"}
"""Outputs a ``vector`` or ``named`` signature may read (written as floats)."""
PROBE_ITEMS: Final = 2
"""Items in the probe batch (two, so a graph that fixes its batch at one shows)."""


def _session(model_bytes: bytes) -> Any:
    """A CPU onnxruntime session of ``model_bytes`` for introspection; :class:`ConfigError` when
    onnxruntime cannot load it."""
    from edgestream.pipeline.serving.runtime import ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's pybind errors derive from Exception only
        raise ConfigError(f"onnxruntime cannot load the graph: {e}") from e


def _shape_text(shape: Any) -> str:
    return "[" + ", ".join("null" if not isinstance(d, int) else str(d) for d in shape) + "]"


def _input_differences(signature: ModelSignature, inputs: dict[str, Any]) -> list[str]:
    spec = signature.input
    out = [
        f"undeclared input {name!r}: the graph needs it, the signature does not feed it"
        for name in inputs
        if name != spec.name
    ]
    graph = inputs.get(spec.name)
    if graph is None:
        return [f"missing input {spec.name!r}: the graph's inputs are {sorted(inputs)}", *out]
    if graph.type != ORT_TYPES[spec.dtype]:
        out.append(f"input {spec.name!r} dtype: signature {spec.dtype}, graph {graph.type}")
    shape = list(graph.shape)
    if len(shape) != len(spec.shape):
        out.append(
            f"input {spec.name!r} shape: signature {_shape_text(spec.shape)}, graph {_shape_text(shape)}"
        )
        return out
    if isinstance(shape[0], int) and shape[0] != -1:
        out.append(f"input {spec.name!r} shape: the graph fixes the batch axis at {shape[0]}, not null")
    for axis, (want, have) in enumerate(zip(spec.shape[1:], shape[1:], strict=True), start=1):
        if isinstance(have, int) and have not in (-1, want):
            out.append(
                f"input {spec.name!r} shape: axis {axis} is {want} in the signature, {have} in the graph"
            )
    return out


def _wanted_types(signature: ModelSignature) -> dict[str, frozenset[str]]:
    """Each output the signature reads, and the types it may have."""
    outputs = signature.outputs
    if isinstance(outputs, Classification):
        wanted = {outputs.probabilities: FLOAT_TYPES}
        if outputs.label is not None:
            wanted[outputs.label] = INTEGER_TYPES
        return wanted
    if isinstance(outputs, Score):
        return {outputs.name: FLOAT_TYPES}
    return {name: NUMERIC_TYPES for name in outputs.names}


def _output_differences(signature: ModelSignature, graph_outputs: dict[str, Any]) -> list[str]:
    wanted = _wanted_types(signature)
    out = [
        f"undeclared output {name!r} ({meta.type}): the graph gives it, the signature does not declare it"
        for name, meta in graph_outputs.items()
        if name not in wanted
    ]
    for name, types in wanted.items():
        meta = graph_outputs.get(name)
        if meta is None:
            out.append(f"missing output {name!r}: the graph's outputs are {sorted(graph_outputs)}")
        elif meta.type not in types:
            out.append(
                f"output {name!r} type: signature needs one of {sorted(types)}, graph gives {meta.type}"
            )
    return out


def _probe_differences(signature: ModelSignature, session: Any) -> list[str]:
    """Run a batch of zeros; the differences in the outputs' shapes."""
    spec = signature.input
    batch = np.zeros((PROBE_ITEMS, *spec.item_shape), dtype=np.dtype(spec.dtype))
    names = list(signature.outputs.names)
    try:
        values = session.run(names, {spec.name: batch})
    except Exception as e:  # onnxruntime's pybind errors derive from Exception only
        return [
            f"the graph fails on a batch of {PROBE_ITEMS} zero items of {spec.item_shape}: {str(e)[:300]}"
        ]
    out: list[str] = []
    widths: dict[str, int] = {}
    for name, value in zip(names, values, strict=True):
        shape = tuple(np.shape(value))
        if not shape or shape[0] != PROBE_ITEMS:
            out.append(
                f"output {name!r} gives shape {list(shape)} for {PROBE_ITEMS} items: no batch axis first"
            )
        else:
            widths[name] = int(np.prod(shape[1:], dtype=np.int64))
    outputs = signature.outputs
    if isinstance(outputs, Classification):
        classes = len(outputs.classes)
        have = widths.get(outputs.probabilities)
        if have is not None and have != classes:
            out.append(
                f"output {outputs.probabilities!r}: {have} probabilities per item, {classes} classes declared"
            )
        if outputs.label is not None and widths.get(outputs.label, 1) != 1:
            out.append(f"output {outputs.label!r}: {widths[outputs.label]} labels per item, not one")
    elif isinstance(outputs, Score) and widths.get(outputs.name, 1) != 1:
        out.append(f"output {outputs.name!r}: {widths[outputs.name]} values per item, a score is one")
    return out


def graph_differences(model_bytes: bytes, signature: ModelSignature) -> list[str]:
    """Every difference between ``signature`` and the graph ``model_bytes``; empty when they agree."""
    session = _session(model_bytes)
    inputs = {meta.name: meta for meta in session.get_inputs()}
    outputs = {meta.name: meta for meta in session.get_outputs()}
    differences = _input_differences(signature, inputs) + _output_differences(signature, outputs)
    if differences:
        return differences
    return _probe_differences(signature, session)


def check_graph(model_bytes: bytes, signature: ModelSignature, what: str) -> None:
    """Nothing when ``signature`` matches the graph; else :class:`SignatureMismatch` listing each
    difference (and :class:`SignatureMismatch` too when onnxruntime cannot load the graph)."""
    try:
        differences = graph_differences(model_bytes, signature)
    except ConfigError as e:
        raise SignatureMismatch(what, (str(e),)) from e
    if differences:
        raise SignatureMismatch(what, tuple(differences))
