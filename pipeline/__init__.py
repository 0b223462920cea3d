"""The library: message contract, crypto, codec, batching, inference sessions, models, device SDK."""

from __future__ import annotations

if __name__ != "edgestream.pipeline":
    raise ImportError(
        f"import this package as edgestream.pipeline, not as {__name__}: the top-level folder is the source "
        "of edgestream.pipeline, and importing it twice would make two copies of every class"
    )
