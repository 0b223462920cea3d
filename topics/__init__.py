"""Topic catalogue (the only place that spells a topic name), region routing, topic admin and ACLs."""

from __future__ import annotations

if __name__ != "edgestream.topics":
    raise ImportError(
        f"import this package as edgestream.topics, not as {__name__}: the top-level folder is the source "
        "of edgestream.topics, and importing it twice would make two copies of every class"
    )
