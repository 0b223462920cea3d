"""The worker's side of sealed replies: each answer's fast reply is sealed to its own device (it opens
under that device's key, in that region, and under no other key), the reply keys are derived once per
device and the cache stays bounded, and an answer whose reply cannot be sealed still gets its result."""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiokafka import TopicPartition

from edgestream.pipeline.contract.envelope import NONCE_BYTES
from edgestream.pipeline.contract.records import ResultRecord
from edgestream.pipeline.contract.reply import (
    ReplyAuthenticationFailed,
    ReplyHeader,
    open_reply,
    read_reply_header,
)
from edgestream.pipeline.serving.auditchain import AuditChain, chain_id
from edgestream.topics.catalogue import replies_topic, results_topic
from edgestream.workers.edge.admission import Answer, Item
from edgestream.workers.edge.outputs import UnitOutputs
from edgestream.workers.edge.sealing import NONCES_PER_DRAW, ReplySealer

REGION = "eu-west"
TP = TopicPartition(f"edge.{REGION}.ingest.embedding", 0)


def _key(device: str) -> bytes:
    return device.encode().ljust(32, b"k")


def _answered(offset: int, device: str, *, device_key: bytes | None) -> Item:
    item = Item(TP, 1, offset, 0, device.encode(), (), b"", 0.0)
    item.envelope = cast(
        "Any",
        SimpleNamespace(
            request_id=offset.to_bytes(16, "big"), device_id=device, key_id=3, capture_time_ms=0, model="m"
        ),
    )
    item.model = cast("Any", SimpleNamespace(key=("m", 2), typed=None, sample_inputs=False))
    item.answer = Answer(1, (0.25, 0.75), 0.5, 4)
    item.device_key = device_key
    return item


def test_a_units_replies_are_each_sealed_to_its_own_device() -> None:
    chains = AuditChain()
    chains.start(chain_id(TP.topic, TP.partition), None, offset=0)
    outputs = UnitOutputs(REGION, "node-a", chains, cloud=False)
    devices = ["dev-a", "dev-b", "dev-a"]
    items = [_answered(n, d, device_key=_key(d)) for n, d in enumerate(devices)]
    (work,) = outputs.build(items, 0.0, cast("Any", None)).values()
    results = {r.request_id: r for r in map(ResultRecord.from_bytes, _values(work, results_topic(REGION)))}
    replies = [o for o in work.replies if o.topic == replies_topic(REGION)]
    assert len(replies) == len(results) == 3
    for reply, device in zip(replies, devices, strict=True):
        assert reply.key == device.encode()
        opened = open_reply(reply.value, _key(device), REGION)
        assert opened == results[opened.request_id]
        other = "dev-b" if device == "dev-a" else "dev-a"
        with pytest.raises(ReplyAuthenticationFailed):
            open_reply(reply.value, _key(other), REGION)
        with pytest.raises(ReplyAuthenticationFailed):
            open_reply(reply.value, _key(device), "eu-east")


def test_an_answer_whose_reply_cannot_be_sealed_still_commits_its_result(
    caplog: pytest.LogCaptureFixture,
) -> None:
    chains = AuditChain()
    chains.start(chain_id(TP.topic, TP.partition), None, offset=0)
    outputs = UnitOutputs(REGION, "node-a", chains, cloud=False)
    items = [_answered(0, "dev-a", device_key=None), _answered(1, "dev-b", device_key=_key("dev-b"))]
    with caplog.at_level(logging.WARNING):
        (work,) = outputs.build(items, 0.0, cast("Any", None)).values()
    assert len(_values(work, results_topic(REGION))) == 2, "both answers are results"
    assert [r.key for r in work.replies] == [b"dev-b"], "only the sealable reply is sent"
    assert all(it.error is None for it in items)
    assert "sealing the reply" in caplog.text


def test_reply_keys_are_derived_once_per_device_and_the_cache_is_bounded() -> None:
    sealer = ReplySealer(REGION, cache_entries=2)
    header = ReplyHeader(bytes(16), 3, "m", 2)
    record = ResultRecord(bytes(16), "d", "m", 2, 1, (1.0,), 0.0, 0.0, 0.0, 1, "n", REGION, 0).to_bytes()
    for _ in range(5):
        for device in ("a", "b"):
            sealed = sealer.seal(record, _key(device), header)
            assert open_reply(sealed, _key(device), REGION).to_bytes() == record
    assert sealer.derived == 2, "one derivation per device, however many replies"
    sealer.seal(record, _key("c"), header)  # a third device pushes out the least recently used
    sealer.seal(record, _key("b"), header)
    assert sealer.derived == 3
    sealer.seal(record, _key("a"), header)
    assert sealer.derived == 4, "a's key had been evicted"
    with pytest.raises(ValueError, match="at least one key"):
        ReplySealer(REGION, cache_entries=0)


def _values(work: Any, topic: str) -> list[bytes]:
    return [o.value for o in work.outputs if o.topic == topic]


def _nonce(sealed: bytes) -> bytes:
    _, at = read_reply_header(sealed)
    return sealed[at : at + NONCE_BYTES]


def test_every_reply_has_its_own_nonce_across_draws() -> None:
    sealer = ReplySealer(REGION)
    header = ReplyHeader(bytes(16), 3, "m", 2)
    record = ResultRecord(bytes(16), "d", "m", 2, 1, (1.0,), 0.0, 0.0, 0.0, 1, "n", REGION, 0).to_bytes()
    sealed = [sealer.seal(record, _key("a"), header) for _ in range(3 * NONCES_PER_DRAW + 5)]
    assert len({_nonce(s) for s in sealed}) == len(sealed)
    assert all(open_reply(s, _key("a"), REGION).to_bytes() == record for s in sealed[-NONCES_PER_DRAW:])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_never_reuses_its_parents_drawn_nonces() -> None:
    sealer = ReplySealer(REGION)
    header = ReplyHeader(bytes(16), 3, "m", 2)
    record = ResultRecord(bytes(16), "d", "m", 2, 1, (1.0,), 0.0, 0.0, 0.0, 1, "n", REGION, 0).to_bytes()
    sealer.seal(record, _key("a"), header)  # nonces drawn, most of them still to hand out
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        os.write(write, _nonce(sealer.seal(record, _key("a"), header)))
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(child, 0)
    childs = os.read(read, 64)
    os.close(read)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(childs) == NONCE_BYTES
    assert _nonce(sealer.seal(record, _key("a"), header)) != childs
