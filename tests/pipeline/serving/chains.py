"""Audit chains to verify: unlinked records, records linked into chains, and where a reader finds them."""

from __future__ import annotations

import random
from collections.abc import Sequence

from edgestream.pipeline.contract.records import AuditRecord
from edgestream.pipeline.serving.auditchain import AuditChain, ChainHead, chain_id
from edgestream.pipeline.serving.auditverify import Position

T0_MS = 1_750_000_000_000
"""Timestamp of ``audit(0)``."""
AUDIT = "edge.eu-west.audit"
"""The audit topic the records are placed on."""
FRAMES = chain_id("edge.eu-west.ingest.frame", 2)
"""The default chain."""
EMBEDDINGS = chain_id("edge.eu-west.ingest.embedding", 0)
"""A second chain."""

Entry = tuple[Position, bytes]
"""An audit value at its position, as ``verify`` takes it."""


def audit(i: int) -> AuditRecord:
    """An unlinked audit record, different for every ``i``."""
    dead = i % 7 == 3
    return AuditRecord(
        timestamp_ms=T0_MS + i,
        request_id=i.to_bytes(16, "big"),
        node="edge-eu-west-0",
        region="eu-west",
        device_id=f"dev-{i % 5}",
        model="frame-classifier",
        model_version=None if dead else 4,
        outcome="dead_letter" if dead else "ok",
        reason="stale" if dead else None,
        latency_ms=1.5 + i,
    )


def linked(
    chains: AuditChain, chain: str, count: int, *, first: int = 0, commit_every: int = 4
) -> list[AuditRecord]:
    """``count`` records linked into a started ``chain``, committed every ``commit_every`` and at the end."""
    out = []
    for i in range(first, first + count):
        out.append(chains.link(chain, audit(i)))
        if len(out) % commit_every == 0:
            chains.commit(chain)
    chains.commit(chain)
    return out


def new_chain(count: int, *, chain: str = FRAMES, offset: int = 0) -> tuple[list[AuditRecord], ChainHead]:
    """``count`` records of a new segment of ``chain`` started at input ``offset``, and its committed head."""
    chains = AuditChain()
    chains.start(chain, None, offset=offset)
    records = linked(chains, chain, count)
    head = chains.head(chain)
    assert head is not None
    return records, head


def place(records: Sequence[AuditRecord], *, partitions: int = 3, seed: int = 0) -> list[Entry]:
    """The records as a reader finds them: values on audit partitions (chosen like a key hash would),
    offsets growing per partition in production order."""
    rng = random.Random(seed)
    next_offset = [0] * partitions
    entries = []
    for record in records:
        p = rng.randrange(partitions)
        entries.append((Position(AUDIT, p, next_offset[p]), record.to_bytes()))
        next_offset[p] += rng.randint(1, 3)  # transaction markers take offsets too
    return entries
