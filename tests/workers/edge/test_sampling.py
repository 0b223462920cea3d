"""Which answers go to ``cloud.samples``: only a model whose signature lets its raw inputs leave the
edge (a zoo embedding model, as always; a user's model only with ``sample_inputs: true``)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from aiokafka import TopicPartition

from edgestream.pipeline.contract.cloud import Sample, pseudonym
from edgestream.pipeline.security.derive import pseudonym_key
from edgestream.pipeline.security.keyring import KeyRing
from edgestream.pipeline.serving.auditchain import AuditChain, chain_id
from edgestream.topics.catalogue import SAMPLES_TOPIC
from edgestream.workers.edge.admission import Answer, Item
from edgestream.workers.edge.outputs import UnitOutputs, sampled

REGION = "eu-west"
TP = TopicPartition(f"edge.{REGION}.ingest.embedding", 0)


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


def test_a_samples_pseudonym_follows_the_regions_current_master_key() -> None:
    """The pseudonym key is derived once per current master key, and again after a rotation."""
    chains = AuditChain()
    chains.start(chain_id(TP.topic, TP.partition), None, offset=0)
    outputs = UnitOutputs(REGION, "node-a", chains, cloud=True)

    def sample_device(keyring: KeyRing, offset: int) -> bytes:
        item = Item(TP, 1, offset, 0, b"dev-1", (), b"", 0.0)
        item.envelope = cast(
            "Any",
            SimpleNamespace(
                request_id=offset.to_bytes(16, "big"),
                device_id="dev-1",
                key_id=1,
                capture_time_ms=0,
                model="m",
            ),
        )
        item.model = cast("Any", SimpleNamespace(key=("m", 2), typed=None, sample_inputs=True))
        item.answer = Answer(1, (0.25, 0.75), 0.5, 1)
        item.features = (0.5, 1.5)
        (work,) = outputs.build([item], 0.0, keyring).values()
        (sample,) = [Sample.from_bytes(o.value) for o in work.outputs if o.topic == SAMPLES_TOPIC]
        return sample.device

    first, second = bytes(range(32)), bytes(range(1, 33))
    keyring = KeyRing({REGION: {1: first}})
    expected = pseudonym(pseudonym_key(first), "dev-1")
    assert sample_device(keyring, 0) == sample_device(keyring, 1) == expected
    rotated = KeyRing({REGION: {1: first, 2: second}})
    assert rotated.current_key_id(REGION) == 2
    assert sample_device(rotated, 2) == pseudonym(pseudonym_key(second), "dev-1") != expected
    assert sample_device(keyring, 3) == expected
