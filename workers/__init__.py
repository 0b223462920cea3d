"""The processes: the edge worker, the cloud aggregator, the retrainer, the rollout controller, operator
tasks (``ops``) and the local development tools (``local``: broker, simulated fleet, demo)."""

from __future__ import annotations

if __name__ != "edgestream.workers":
    raise ImportError(
        f"import this package as edgestream.workers, not as {__name__}: the top-level folder is the source "
        "of edgestream.workers, and importing it twice would make two copies of every class"
    )
