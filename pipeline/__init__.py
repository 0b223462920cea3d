"""The library, one package per stage of the data flow: contract (the wire), serving, security,
learning, registry, models and observability, and the one Kafka client factory (``kafka``)."""

from __future__ import annotations

if __name__ != "edgestream.pipeline":
    raise ImportError(
        f"import this package as edgestream.pipeline, not as {__name__}: the top-level folder is the source "
        "of edgestream.pipeline, and importing it twice would make two copies of every class"
    )
