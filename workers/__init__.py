"""Runnable processes: the local broker, the edge worker, the device fleet, the demo."""

from __future__ import annotations

if __name__ != "edgestream.workers":
    raise ImportError(
        f"import this package as edgestream.workers, not as {__name__}: the top-level folder is the source "
        "of edgestream.workers, and importing it twice would make two copies of every class"
    )
