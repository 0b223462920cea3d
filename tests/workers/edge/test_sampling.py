"""Which answers go to ``cloud.samples``: only a model whose signature lets its raw inputs leave the
edge (a zoo embedding model, as always; a user's model only with ``sample_inputs: true``)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from aiokafka import TopicPartition

from edgestream.workers.edge.admission import Item
from edgestream.workers.edge.outputs import sampled


def _item(request_id: bytes, sample_inputs: bool) -> Item:
    item = Item(TopicPartition("edge.r.ingest.embedding", 0), 0, 0, 0, b"d", (), b"", 0.0)
    item.envelope = cast("Any", SimpleNamespace(request_id=request_id, kind="embedding"))
    item.model = cast("Any", SimpleNamespace(sample_inputs=sample_inputs))
    return item


def test_only_models_that_allow_it_are_sampled() -> None:
    ids = [i.to_bytes(16, "big") for i in range(200)]
    allowed = [rid for rid in ids if sampled(_item(rid, True), 0.5)]
    assert 50 < len(allowed) < 150, "about half, chosen by request id"
    assert all(sampled(_item(rid, True), 0.5) for rid in allowed), "the same choice every time"
    assert not any(sampled(_item(rid, False), 1.0) for rid in ids), "never, even at a fraction of 1"
    assert not any(sampled(_item(rid, True), 0.0) for rid in ids)
