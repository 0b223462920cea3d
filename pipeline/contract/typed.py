"""The typed part of a result record: what a model served by its declared signature answered.

A zoo model's result record is the classification of ``docs/contract.md`` section 10 (``label``,
``scores``) and carries none of these keys. A model served by a signature adds ``kind`` and, by kind,
``cls`` (classification: the class name of ``label``), ``thr`` (score: the decision threshold) or
``out`` (named: each output's values under its name). ``label`` and ``scores`` are always there, so a
reader that knows only the classification contract still parses every record: for a score ``label``
is the decision (1, 0, or -1 without a threshold) and ``scores`` the one score; for a vector ``label``
is -1 and ``scores`` the vector; for named outputs ``label`` is -1 and ``scores`` empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal, TypeAlias, cast

OutputKind: TypeAlias = Literal["classification", "score", "vector", "named"]
"""What a signature's outputs mean (``pipeline/models/signature.py``)."""
OUTPUT_KINDS: Final[tuple[OutputKind, ...]] = ("classification", "score", "vector", "named")
"""Every kind, as the ``kind`` key spells it."""
NO_LABEL: Final = -1
"""``label`` of an answer that has no class: a score without threshold, a vector, named outputs."""


@dataclass(frozen=True, slots=True)
class TypedResult:
    """The keys a signature model adds to its result record."""

    kind: OutputKind
    """The signature's output kind (``kind``)."""
    class_name: str | None = None
    """Classification: the name of the predicted class (``cls``)."""
    threshold: float | None = None
    """Score: the decision threshold ``label`` was decided by (``thr``)."""
    named: Mapping[str, tuple[float, ...]] | None = None
    """Named: each output's values, flattened per item, under its name (``out``)."""

    def wire(self) -> dict[str, object]:
        """The record keys, in contract order; absent ones omitted."""
        fields: dict[str, object] = {"kind": self.kind}
        if self.class_name is not None:
            fields["cls"] = self.class_name
        if self.threshold is not None:
            fields["thr"] = float(self.threshold)
        if self.named is not None:
            fields["out"] = {name: list(values) for name, values in self.named.items()}
        return fields

    @classmethod
    def from_fields(cls, fields: Mapping[str, object]) -> TypedResult | None:
        """The typed keys of a parsed record; None when it has no ``kind`` (a zoo classification).
        Raises TypeError naming a key of the wrong type."""
        kind = fields.get("kind")
        if kind is None:
            return None
        if kind not in OUTPUT_KINDS:
            raise TypeError(f"'kind' must be one of {list(OUTPUT_KINDS)}")
        class_name = fields.get("cls")
        if class_name is not None and type(class_name) is not str:
            raise TypeError("'cls' must be a str")
        threshold = fields.get("thr")
        if threshold is not None and type(threshold) not in (float, int):
            raise TypeError("'thr' must be a number")
        return cls(
            kind=kind,
            class_name=class_name,
            threshold=None if threshold is None else float(cast("float", threshold)),
            named=_named(fields.get("out")),
        )


def _named(value: object) -> Mapping[str, tuple[float, ...]] | None:
    if value is None:
        return None
    if type(value) is not dict:
        raise TypeError("'out' must be a map")
    named: dict[str, tuple[float, ...]] = {}
    for name, values in value.items():
        if type(name) is not str or type(values) is not list:
            raise TypeError("'out' maps output names to arrays of numbers")
        if not all(type(x) in (float, int) for x in values):
            raise TypeError(f"'out.{name}' must hold numbers")
        named[name] = tuple(float(x) for x in values)
    return MappingProxyType(named)
