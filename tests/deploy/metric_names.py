"""The metric names each edgestream process exposes (``pipeline/observability/catalogue.py``), and the
raw metric names PromQL expressions use."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from edgestream.pipeline.observability import catalogue

PROMETHEUS_OWN: Final[frozenset[str]] = frozenset({"up"})
"""Series Prometheus itself writes for every target."""
HISTOGRAM_SUFFIXES: Final[tuple[str, ...]] = ("_bucket", "_count", "_sum")
"""Suffixes of a histogram's series."""
_NAME: Final = re.compile(r"(?<![\w:])(edgestream_[a-z0-9_]+|up)(?![\w:])")


def exposed() -> tuple[frozenset[str], frozenset[str], frozenset[str], frozenset[str]]:
    """The worker's, the gateway's, the aggregator's and the rollout controller's metric names (the
    catalogue's)."""
    return (
        frozenset(catalogue.METRICS_WORKER),
        frozenset(catalogue.METRICS_GATEWAY),
        frozenset(catalogue.METRICS_AGGREGATOR),
        frozenset(catalogue.METRICS_ROLLOUT),
    )


def used(expressions: Iterable[str]) -> set[str]:
    """The raw metric names PromQL ``expressions`` select (recording rules' ``a:b:c`` names excluded)."""
    names: set[str] = set()
    for expr in expressions:
        names.update(m.group(1) for m in _NAME.finditer(expr))
    return names


def known(name: str, exposed_names: frozenset[str]) -> bool:
    """Whether ``name`` (or the histogram it is a series of) is among ``exposed_names``."""
    if name in exposed_names or name in PROMETHEUS_OWN:
        return True
    return any(name.endswith(s) and name.removesuffix(s) in exposed_names for s in HISTOGRAM_SUFFIXES)
