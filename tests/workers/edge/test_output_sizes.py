"""A record whose outputs could not be written to Kafka is dead-lettered alone.

The producer refuses a record over its request limit, and a unit's transaction holds every output of
the unit: one such output would fail the unit every time it is read again, so the partition would stop
(the per-worker sink: every partition of the unit). A model's answer decides how large a result is (a
``vector`` or ``named`` signature writes its outputs whole) and a sample carries the input's features,
so the bound is checked per record as its outputs are built."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import msgpack
import pytest
from aiokafka import TopicPartition

from edgestream.pipeline.contract.limits import PRODUCER_MAX_REQUEST_BYTES, record_size
from edgestream.pipeline.security.keyring import KeyRing
from edgestream.pipeline.serving.auditchain import AuditChain, chain_id
from edgestream.topics.catalogue import SAMPLES_TOPIC, dlq_topic, replies_topic, results_topic
from edgestream.workers.edge.admission import Answer, Item
from edgestream.workers.edge.outputs import SMALL_DEAD_LETTER_BYTES, UnitOutputs

REGION = "eu-west"
TP = TopicPartition(f"edge.{REGION}.ingest.embedding", 0)
KEYRING = KeyRing({REGION: {1: bytes(range(32))}})
FLOATS_OVER_LIMIT = PRODUCER_MAX_REQUEST_BYTES // 9 + 1
"""msgpack writes a float as 9 bytes: this many scores make a result over the producer's limit."""


def _item(offset: int, *, scores: int = 2, features: int | None = None) -> Item:
    device = f"dev-{offset}"
    item = Item(TP, 1, offset, 0, device.encode(), (), b"sealed", 0.0)
    item.envelope = cast(
        "Any",
        SimpleNamespace(
            request_id=offset.to_bytes(16, "big"),
            device_id=device,
            key_id=1,
            capture_time_ms=0,
            model="m",
            model_version=None,
        ),
    )
    item.model = cast("Any", SimpleNamespace(key=("m", 2), typed=None, sample_inputs=features is not None))
    item.answer = Answer(1, tuple(0.5 + i for i in range(scores)), 0.5, 3)
    item.device_key = bytes(32)
    if features is not None:
        item.features = tuple(float(i) for i in range(features))
    return item


def _build(items: list[Item]) -> Any:
    chains = AuditChain()
    chains.start(chain_id(TP.topic, TP.partition), None, offset=0)
    (work,) = UnitOutputs(REGION, "node-a", chains, cloud=True).build(items, 0.0, KEYRING).values()
    return work


@pytest.mark.parametrize(
    ("big", "what"),
    [
        (_item(1, scores=FLOATS_OVER_LIMIT), "result"),
        (_item(1, features=FLOATS_OVER_LIMIT), "sample"),
    ],
    ids=["result", "sample"],
)
def test_an_answer_too_large_for_kafka_is_dead_lettered_alone(big: Item, what: str) -> None:
    work = _build([_item(0), big, _item(2)])
    assert big.error is not None
    assert big.error.reason == "internal"
    assert big.error.cause_class.endswith(".OutputTooLarge"), big.error.cause_class  # type: ignore[attr-defined]
    by_topic: dict[str, list[Any]] = {}
    for o in work.outputs:
        by_topic.setdefault(o.topic, []).append(o)
    results = [msgpack.unpackb(o.value, raw=False) for o in by_topic[results_topic(REGION)]]
    assert sorted(r["rid"] for r in results) == [(0).to_bytes(16, "big"), (2).to_bytes(16, "big")], (
        "the neighbours are answered"
    )
    assert len(by_topic[dlq_topic(REGION)]) == 1, f"the record with the oversized {what} is dead-lettered"
    assert SAMPLES_TOPIC not in by_topic, "nothing of it is published"
    assert [r.topic for r in work.replies] == [replies_topic(REGION)] * 2
    for o in work.outputs:
        assert record_size(o.key, o.value, o.headers) <= PRODUCER_MAX_REQUEST_BYTES


def test_an_answer_just_within_the_limit_is_published() -> None:
    scores = (PRODUCER_MAX_REQUEST_BYTES - 4096) // 9
    item = _item(0, scores=scores)
    work = _build([item])
    assert item.error is None
    (result,) = [o for o in work.outputs if o.topic == results_topic(REGION)]
    assert len(result.value) > 1 << 19
    assert record_size(result.key, result.value, result.headers) <= PRODUCER_MAX_REQUEST_BYTES


def test_records_the_cluster_refused_are_dead_lettered_then_with_a_small_dead_letter() -> None:
    """``refuse`` (the settlement's, once the cluster named a record's output refused for its size):
    read again, that record is dead-lettered and its neighbours answered; if its dead letter is refused
    too, the next one keeps at most `SMALL_DEAD_LETTER_BYTES`, its value cut."""
    chains = AuditChain()
    chains.start(chain_id(TP.topic, TP.partition), None, offset=0)
    outputs = UnitOutputs(REGION, "node-a", chains, cloud=False)
    results, dlq = results_topic(REGION), dlq_topic(REGION)

    def built(*offsets: int, raw: bytes = b"sealed") -> dict[int, list[Any]]:
        items = [_item(offset) for offset in offsets]
        for item in items:
            item.raw = raw
        (work,) = outputs.build(items, 0.0, KEYRING).values()
        by_origin: dict[int, list[Any]] = {}
        for o in work.outputs:
            by_origin.setdefault(o.origin, []).append(o)
        return by_origin

    first = built(0, 1, 2)
    assert first[1][0].topic == results, "answered, each output naming its record"
    outputs.refuse(TP, 1, results)
    again = built(0, 1, 2)
    assert again[0][0].topic == again[2][0].topic == results
    [letter] = [o for o in again[1] if o.topic == dlq]
    headers = dict(letter.headers)
    assert b"refused it for its size" in headers["edgestream.errors.exception.message"]
    assert letter.value == b"sealed", "whole: replayable once the topic is fixed"

    outputs.refuse(TP, 1, dlq)  # its dead letter refused too
    big = bytes(range(256)) * 64
    item = _item(1)
    item.raw, item.headers = big, (("bulk", b"h" * 6000),)  # its own headers alone over the small limit
    (work,) = outputs.build([item], 0.0, KEYRING).values()
    [small] = [o for o in work.outputs if o.topic == dlq]
    assert record_size(small.key, small.value, small.headers) <= SMALL_DEAD_LETTER_BYTES
    assert dict(small.headers)["edgestream.errors.truncated"] == b"value,headers"
    assert small.value
    assert big.startswith(small.value)


def test_a_record_whose_cloud_sample_the_cluster_refused_is_answered_without_one() -> None:
    chains = AuditChain()
    chains.start(chain_id(TP.topic, TP.partition), None, offset=0)
    outputs = UnitOutputs(REGION, "node-a", chains, cloud=True)

    def topics_of(offset: int) -> list[str]:
        items = [_item(n, features=8) for n in (0, 1)]
        (work,) = outputs.build(items, 0.0, KEYRING).values()
        assert all(item.error is None for item in items)
        return [o.topic for o in work.outputs if o.origin == offset]

    assert SAMPLES_TOPIC in topics_of(1)
    outputs.refuse(TP, 1, SAMPLES_TOPIC)
    assert SAMPLES_TOPIC not in topics_of(1)
    assert results_topic(REGION) in topics_of(1), "answered: only the sample is left out"
    assert SAMPLES_TOPIC in topics_of(0)
