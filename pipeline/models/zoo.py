"""The reference model zoo: what each model family and size is, and the input it accepts.

Two families, each in three sizes. ``embedding-scorer`` scores 30 float16 features (scikit-learn's
bundled breast-cancer data, binary); ``frame-classifier`` classifies 32x32 uint8 frames (the bundled
8x8 digits upscaled by 4, ten classes). ``tiny`` is a logistic regression and doubles as the device's
local fallback model; ``medium`` and ``full`` are MLPs. This module is light (no numpy, no
onnxruntime) so the worker's validation path and the CLI can import it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal, get_args

from edgestream.pipeline.errors import ShapeMismatch, UnknownModel

if TYPE_CHECKING:
    from collections.abc import Mapping

Kind = Literal["embedding", "frame"]
"""What a device sends: a feature vector or an image frame (also the ingest topic suffix)."""
Size = Literal["tiny", "medium", "full"]
"""Model size: ``tiny`` is a single Gemm (also the device fallback), the others are MLPs."""
InputDtype = Literal["float16", "uint8"]
"""Wire dtype of a model's input tensor."""

GRAPH_INPUT = "input"
"""The graph input every zoo model takes (batch first)."""
GRAPH_LABEL = "label"
"""The zoo graphs' output of class indices [N]."""
GRAPH_PROBS = "probs"
"""The zoo graphs' output of class probabilities [N, classes]."""

SIZES: tuple[Size, ...] = get_args(Size)
"""Every size, smallest first."""
FALLBACK_SIZE: Size = "tiny"
"""The size a device runs locally when the edge cannot answer in time."""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One model of the zoo: its interface (input, classes) and its architecture."""

    name: str
    """Family name as envelopes spell it, e.g. ``embedding-scorer``."""
    kind: Kind
    """Ingest kind: which ``edge.<region>.ingest.<kind>`` topic carries its requests."""
    size: Size
    """Size within the family."""
    input_dtype: InputDtype
    """Dtype of the tensor the device sends and the ONNX graph's ``input`` takes."""
    input_shape: tuple[int, ...]
    """Shape of ONE item, without the batch dimension, e.g. ``(30,)`` or ``(32, 32)``."""
    class_names: tuple[str, ...]
    """Class names in label order; ``label`` outputs index into this."""
    hidden_units: tuple[int, ...]
    """Hidden layer widths; empty for a logistic regression (a single Gemm)."""

    @property
    def n_classes(self) -> int:
        """Number of classes: the width of the ``probs`` output."""
        return len(self.class_names)

    @property
    def is_fallback(self) -> bool:
        """True for the size that doubles as the device's local fallback model."""
        return self.size == FALLBACK_SIZE

    def check_input(self, dtype: str, shape: tuple[int, ...]) -> None:
        """Raise :class:`ShapeMismatch` unless ``dtype`` and per-item ``shape`` match this spec.

        ``shape`` is one item's shape, without the batch dimension.
        """
        if dtype != self.input_dtype or tuple(shape) != self.input_shape:
            raise ShapeMismatch(
                f"{self.name}/{self.size} takes {self.input_dtype} items of shape {self.input_shape}, "
                f"got {dtype} items of shape {tuple(shape)}"
            )


_HIDDEN_UNITS: Mapping[Size, tuple[int, ...]] = {"tiny": (), "medium": (64,), "full": (256, 128)}
_FAMILIES: tuple[tuple[str, Kind, InputDtype, tuple[int, ...], tuple[str, ...]], ...] = (
    ("embedding-scorer", "embedding", "float16", (30,), ("malignant", "benign")),
    ("frame-classifier", "frame", "uint8", (32, 32), tuple(str(digit) for digit in range(10))),
)

FAMILIES: tuple[str, ...] = tuple(family[0] for family in _FAMILIES)
"""Every family name, in build order."""

SPECS: Mapping[tuple[str, Size], ModelSpec] = MappingProxyType(
    {
        (name, size): ModelSpec(
            name=name,
            kind=kind,
            size=size,
            input_dtype=dtype,
            input_shape=shape,
            class_names=classes,
            hidden_units=_HIDDEN_UNITS[size],
        )
        for name, kind, dtype, shape, classes in _FAMILIES
        for size in SIZES
    }
)
"""The registry: ``(family name, size) -> ModelSpec`` for every model the project builds."""


def spec(name: str, size: str = "medium") -> ModelSpec:
    """The spec of family ``name`` at ``size``; :class:`UnknownModel` when either is unknown."""
    for (known_name, known_size), found in SPECS.items():
        if known_name == name and known_size == size:
            return found
    raise UnknownModel(name if name not in FAMILIES else f"{name}/{size}")
