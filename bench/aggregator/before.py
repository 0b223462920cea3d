"""The aggregator's per-record steps as they were before ``bench.aggregator``'s changes, for the side
by side: a sample's bins by one ``searchsorted`` per feature, and the nesting check that pushed every
scalar of a record onto its stack (``pipeline/contract/fields.py``). Thresholds were simulated on the
event loop (``calibration.threshold``: no code of its own here)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from edgestream.pipeline.contract import fields
from edgestream.pipeline.learning.drift import FeatureReference, bin_index


def bins_of(reference: FeatureReference, features: Sequence[float]) -> list[int]:
    """``FeatureReference.bins_of`` before: ``bin_index`` of each feature against its edges."""
    return [int(bin_index(x, e)) for x, e in zip(features, reference.edges, strict=True)]


def check_depth(value: Any, *, max_depth: int = fields.MAX_DEPTH) -> None:
    """``fields.check_depth`` before: every child, scalar or not, went through the stack."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, tuple, dict)):
            if depth >= max_depth:
                raise fields.FieldError(f"nested deeper than {max_depth} levels")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


@contextlib.contextmanager
def old_depth_check() -> Iterator[None]:
    """The records' decoders check nesting as before, meanwhile."""
    now = fields.check_depth
    fields.check_depth = check_depth
    try:
        yield
    finally:
        fields.check_depth = now
