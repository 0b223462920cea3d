"""A model signature: what a user's ONNX graph takes and gives, declared in a YAML or JSON file.

The signature travels in the signed manifest (``Manifest.signature``) and is what the edge worker
serves a non-zoo model by: which graph input the envelope's tensor feeds, in which graph dtype and
per-item shape, which wire dtypes a device may send (float32, float16, int8 with its scale, uint8
frames), an optional normalisation applied at the edge, and what the outputs mean (``classification``,
``score``, ``vector`` or ``named``). ``sample_inputs`` says whether raw inputs may be sampled to the
cloud (never, unless it says so). The format is documented in ``docs/models.md``.

Validation is pydantic's: every error names the field it is about (``input.shape[0]: ...``). This
module is light (pydantic and, for YAML files, pyyaml; no numpy, no onnxruntime): the graph check is in
``pipeline/models/graphcheck.py``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgestream.pipeline.errors import ConfigError
from edgestream.pipeline.models.zoo import GRAPH_INPUT, GRAPH_LABEL, GRAPH_PROBS

if TYPE_CHECKING:
    from edgestream.pipeline.models.zoo import ModelSpec

SIGNATURE_FORMAT: Final = 1
"""The version of the signature format this build reads."""

WireDtype = Literal["float32", "float16", "int8", "uint8"]
"""What a device may send (``docs/contract.md`` section 4): int8 carries its scale."""
GraphDtype = Literal["float32", "float16", "float64", "int8", "uint8", "int32", "int64"]
"""Element types a signature's graph input may take."""
FLOAT_DTYPES: Final = frozenset({"float32", "float16", "float64"})
"""Graph dtypes that take converted and normalised values."""
Ingest = Literal["embedding", "frame"]
"""Which ingest topic (``edge.<region>.ingest.<kind>``) carries the model's requests."""


class _Strict(BaseModel):
    """Frozen, no unknown fields (a typo is an error that names it)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


Number = float | tuple[float, ...]
"""A scalar applied to every feature, or one value per feature (the input's last axis)."""


class Normalisation(_Strict):
    """``x' = (x - mean) / std``, applied by the worker after decoding, in float32."""

    mean: Number = 0.0
    """Subtracted first: a scalar, or one value per feature."""
    std: Number = 1.0
    """Divided by next: a scalar, or one value per feature; every value finite and > 0."""

    @field_validator("mean")
    @classmethod
    def _finite(cls, value: Number) -> Number:
        values = value if isinstance(value, tuple) else (value,)
        if not values or not all(math.isfinite(v) for v in values):
            raise ValueError("must be finite numbers (a scalar or a non-empty list)")
        return value

    @field_validator("std")
    @classmethod
    def _positive(cls, value: Number) -> Number:
        values = value if isinstance(value, tuple) else (value,)
        if not values or not all(math.isfinite(v) and v > 0 for v in values):
            raise ValueError("must be finite numbers > 0 (a scalar or a non-empty list)")
        return value


class InputSpec(_Strict):
    """The graph input the envelope's tensor feeds."""

    name: str = Field(min_length=1)
    """The ONNX graph's input name."""
    dtype: GraphDtype
    """The element type the graph takes."""
    shape: tuple[int | None, ...]
    """The graph input's shape, batch axis first (``null`` or ``-1``); every other axis fixed."""
    wire: tuple[WireDtype, ...] = ()
    """Wire dtypes a device may send; empty means the graph dtype itself."""
    normalise: Normalisation | None = None
    """Applied after decoding (float graph dtypes only)."""

    @field_validator("shape")
    @classmethod
    def _batch_first(cls, shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        if len(shape) < 2:
            raise ValueError("needs the batch axis and at least one item axis, e.g. [null, 20]")
        if shape[0] not in (None, -1):
            raise ValueError(f"the first axis is the batch axis: null or -1, not {shape[0]}")
        for axis, dim in enumerate(shape[1:], start=1):
            if dim is None or dim < 1:
                raise ValueError(f"axis {axis} must be a fixed size >= 1, not {dim}")
        return (None, *shape[1:])

    @model_validator(mode="after")
    def _consistent(self) -> InputSpec:
        wire = self.wire or ((self.dtype,) if self.dtype in ("float32", "float16", "int8", "uint8") else ())
        if not wire:
            raise ValueError(f"wire: list the wire dtypes a device sends for a {self.dtype} input")
        if len(set(wire)) != len(wire):
            raise ValueError("wire: a dtype is listed twice")
        if self.dtype not in FLOAT_DTYPES and (wire != (self.dtype,) or self.normalise is not None):
            raise ValueError(
                f"a {self.dtype} graph input takes {self.dtype} from the wire as it is: "
                f"wire must be [{self.dtype}] and there can be no normalise"
            )
        features = self.item_shape[-1]
        if self.normalise is not None:
            for field_name in ("mean", "std"):
                value = getattr(self.normalise, field_name)
                if isinstance(value, tuple) and len(value) != features:
                    raise ValueError(
                        f"normalise.{field_name}: {len(value)} values for {features} features "
                        "(the input's last axis)"
                    )
        object.__setattr__(self, "wire", wire)
        return self

    @property
    def item_shape(self) -> tuple[int, ...]:
        """One item's shape, without the batch axis."""
        return tuple(int(d) for d in self.shape[1:] if d is not None)


def _unique(names: tuple[str, ...]) -> tuple[str, ...]:
    if len(set(names)) != len(names):
        raise ValueError("a name is listed twice")
    if not all(names):
        raise ValueError("names must not be empty")
    return names


class Classification(_Strict):
    """Class probabilities, and optionally the graph's own label output (else the argmax)."""

    kind: Literal["classification"]
    probabilities: str = Field(min_length=1)
    """Output of shape [N, len(classes)]: the result record's ``scores``."""
    label: str | None = None
    """Output of integer class indices [N] (or [N, 1]); none: the argmax of the probabilities."""
    classes: tuple[str, ...] = Field(min_length=2)
    """Class names in index order; the result record's ``cls`` is ``classes[label]``."""

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        return _unique(names)

    @property
    def names(self) -> tuple[str, ...]:
        """The graph outputs it reads, probabilities first."""
        return (self.probabilities,) if self.label is None else (self.probabilities, self.label)


class Score(_Strict):
    """One float per item, with an optional decision threshold."""

    kind: Literal["score"]
    name: str = Field(min_length=1)
    """Output of shape [N] or [N, 1]."""
    threshold: float | None = None
    """With one, the result's ``label`` is 1 when the score is >= it, else 0 (-1 without one)."""

    @field_validator("threshold")
    @classmethod
    def _finite_threshold(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @property
    def names(self) -> tuple[str, ...]:
        """The graph output it reads."""
        return (self.name,)


class Vector(_Strict):
    """A vector per item (an embedding, a reconstruction, ...)."""

    kind: Literal["vector"]
    name: str = Field(min_length=1)
    """Output of shape [N, ...]; flattened per item into the result's ``scores``."""

    @property
    def names(self) -> tuple[str, ...]:
        """The graph output it reads."""
        return (self.name,)


class Named(_Strict):
    """Several outputs, each written under its name (``out``)."""

    kind: Literal["named"]
    outputs: tuple[str, ...] = Field(min_length=1)
    """Graph output names, each of shape [N, ...]."""

    @field_validator("outputs")
    @classmethod
    def _unique_outputs(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        return _unique(names)

    @property
    def names(self) -> tuple[str, ...]:
        """The graph outputs it reads, in the declared order."""
        return self.outputs


Outputs = Annotated[Classification | Score | Vector | Named, Field(discriminator="kind")]
"""What the graph's outputs mean, by ``kind``."""


class ModelSignature(_Strict):
    """A model's declared interface: its input, its outputs, and whether raw inputs may leave the edge."""

    format: Literal[1] = SIGNATURE_FORMAT
    """The signature format (1)."""
    ingest: Ingest = "embedding"
    """The ingest topic kind its requests arrive on."""
    input: InputSpec
    """The graph input an envelope's tensor feeds."""
    outputs: Outputs
    """What the graph gives and what it means."""
    sample_inputs: bool = False
    """Whether raw inputs may be sampled to ``cloud.samples`` (embeddings only; default never)."""

    @model_validator(mode="after")
    def _samples(self) -> ModelSignature:
        if self.sample_inputs and self.ingest != "embedding":
            raise ValueError("sample_inputs: only embedding inputs may be sampled to the cloud")
        return self

    def to_json(self) -> dict[str, Any]:
        """JSON types, every field spelled out (what the manifest signs)."""
        data: dict[str, Any] = json.loads(self.model_dump_json())
        return data


def field_errors(error: ValidationError) -> str:
    """pydantic's errors, one per line, each as ``field.path: message``."""
    lines = []
    for e in error.errors():
        where = ""
        for part in e["loc"]:
            where += f"[{part}]" if isinstance(part, int) else f".{part}" if where else str(part)
        lines.append(f"{where or '(top)'}: {e['msg'].removeprefix('Value error, ')}")
    return "; ".join(lines)


class BadSignatureFile(ConfigError):
    """A signature file that cannot be read or does not validate; the message names the field."""

    reason = "bad_signature_file"


def parse_signature(data: Any, where: str = "signature") -> ModelSignature:
    """The signature in ``data`` (parsed JSON or YAML); :class:`BadSignatureFile` names each bad field."""
    if not isinstance(data, Mapping):
        raise BadSignatureFile(f"{where}: a signature is a mapping, not {type(data).__name__}")
    try:
        return ModelSignature.model_validate(dict(data))
    except ValidationError as e:
        raise BadSignatureFile(f"{where}: {field_errors(e)}") from e


def load_signature(path: Path) -> ModelSignature:
    """The signature file ``path`` (``.yaml``/``.yml`` as YAML, anything else as JSON)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise BadSignatureFile(f"cannot read signature file {path}: {e}") from e
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except ValueError as e:  # json.JSONDecodeError and yaml.YAMLError's parse errors
        raise BadSignatureFile(f"{path}: not valid {path.suffix.lstrip('.') or 'JSON'}: {e}") from e
    except Exception as e:  # yaml.YAMLError does not derive from ValueError
        raise BadSignatureFile(f"{path}: not valid YAML: {e}") from e
    return parse_signature(data, str(path))


def zoo_signature(spec: ModelSpec) -> ModelSignature:
    """The signature a zoo model serves by: its ``input``, ``label`` and ``probs``, its classes, and
    sampling of embeddings (as the zoo always did)."""
    return ModelSignature(
        ingest=spec.kind,
        input=InputSpec(name=GRAPH_INPUT, dtype=spec.input_dtype, shape=(None, *spec.input_shape)),
        outputs=Classification(
            kind="classification", probabilities=GRAPH_PROBS, label=GRAPH_LABEL, classes=spec.class_names
        ),
        sample_inputs=spec.kind == "embedding",
    )


@dataclass(frozen=True, slots=True)
class SignedArtifact:
    """A user's model from the registry on local disk: its verified ONNX file and its signature."""

    name: str
    """Model name as envelopes spell it (the ``control.models`` key)."""
    version: int
    """Registry version."""
    path: Path
    """The ONNX file (the worker's cache copy, named by its sha256)."""
    sha256: str
    """Hex sha256 of the ONNX bytes (signed in the manifest)."""
    signature: ModelSignature
    """What it takes and gives (checked against the graph before this object exists)."""
