"""The aggregator's drift references: a model kind's training data, or a retrained version's own
training inputs (their counts in the kind's bins, signed into its lineage and read from the registry).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from edgestream.pipeline.errors import EdgestreamError
from edgestream.pipeline.learning.calibration import DriftError
from edgestream.pipeline.learning.drift import FeatureReference, training_reference

log = logging.getLogger(__name__)


def kind_reference(model: str) -> FeatureReference | None:
    """The training reference of a model's inputs; None for models whose samples carry no features."""
    from edgestream.pipeline.models import spec

    try:
        kind = spec(model, "tiny").kind
    except EdgestreamError:
        return None
    return training_reference(kind) if kind == "embedding" else None


def version_reference(model: str, lineage: Any) -> FeatureReference | None:
    """A version's own drift reference: the counts of its training inputs in the bins of the model
    kind's reference, as ``retrain`` signs them into its lineage (``drift_reference``); None when the
    lineage has none or they do not fit the bins."""
    base = kind_reference(model)
    counts = lineage.get("drift_reference") if isinstance(lineage, Mapping) else None
    if base is None or not counts:
        return None
    try:
        arrays = tuple(np.asarray(c, dtype=np.int64) for c in counts)
    except (TypeError, ValueError, OverflowError):  # OverflowError: a count past int64
        return None
    if len(arrays) != base.n_features or any(
        a.shape != b.shape or not 0 < _total(a) <= INT64_MAX for a, b in zip(arrays, base.counts, strict=True)
    ):
        log.warning("%s: a drift reference that does not fit the model's bins is ignored", model)
        return None
    try:
        return FeatureReference(base.edges, arrays, _distinct(lineage, int(arrays[0].sum())))
    except DriftError as e:  # e.g. a negative count: a lineage the aggregator cannot judge against
        log.warning("%s: its drift reference is ignored: %s", model, e)
        return None


INT64_MAX = int(np.iinfo(np.int64).max)
"""The largest total a feature's counts may add up to: numpy adds int64 counts modulo 2**64."""


def _total(counts: np.ndarray[Any, np.dtype[np.int64]]) -> int:
    """What ``counts`` add up to, exactly (numpy's own sum wraps past int64: three counts just under
    2**63 summed to a positive 2**63 - 3, and the shares computed from it passed 1)."""
    return sum(int(c) for c in counts.ravel())


def _distinct(lineage: Mapping[str, Any], total: int) -> int | None:
    """Distinct inputs behind a retrained version's reference counts (its training part's share of the
    ``distinct`` joined inputs; the counts repeat inputs labelled more than once), if fewer."""
    try:
        share = int(lineage["distinct"]) * total / int(lineage["joined"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None
    return max(1, round(share)) if 0 < share < total else None


class References:
    """Per (model, version), the version's own drift reference, refreshed from ``control.models``;
    versions without one are judged against the model kind's training data."""

    def __init__(self) -> None:
        self.by_version: dict[tuple[str, int], FeatureReference] = {}

    def update(self, states: Mapping[str, Any]) -> None:
        """Take the references of every version of ``states`` (model -> ModelState)."""
        found: dict[tuple[str, int], FeatureReference] = {}
        for model, state in states.items():
            for signed in state.versions:
                try:
                    reference = version_reference(model, signed.manifest.lineage)
                except Exception as e:  # one version's lineage: the other versions' references still count
                    log.warning("%s v%d: its drift reference is ignored: %r", model, signed.version, e)
                    continue
                if reference is not None:
                    found[(model, signed.version)] = reference
        self.by_version = found
