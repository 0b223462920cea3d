"""A failure boundary per record, without a broker: whatever one record causes at admission, inference or
output building becomes that record's dead letter (``non_finite``, ``internal``) and the rest of its unit
is answered. The real-broker side is in ``test_worker.py``."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edgestream.pipeline.contract import deadletter as dl
from edgestream.pipeline.contract.cloud import PartialSummary
from edgestream.pipeline.contract.codec import TensorBody, decode_tensor, encode_tensor, pack_body
from edgestream.pipeline.contract.envelope import Envelope, aad, encode_envelope, new_request_id, seal
from edgestream.pipeline.contract.limits import PRODUCER_MAX_REQUEST_BYTES, record_size
from edgestream.pipeline.contract.records import AuditRecord, ResultRecord
from edgestream.pipeline.models import load_dataset
from edgestream.pipeline.security.keyring import KeyRing
from edgestream.pipeline.serving.auditchain import chain_id
from edgestream.pipeline.serving.served import load_models
from edgestream.pipeline.settings import KafkaSettings
from edgestream.topics.catalogue import SUMMARIES_TOPIC, audit_topic, dlq_topic, ingest_topic, results_topic
from edgestream.workers.edge.admission import Answer, Item
from edgestream.workers.edge.commits import StagedUnit, merge
from edgestream.workers.edge.settings import WorkerSettings
from edgestream.workers.edge.worker import EdgeWorker

REGION = "eu-west"
TP = TopicPartition(ingest_topic(REGION, "embedding"), 0)
MARK = 0.25
"""First feature of the input the fake sessions below treat as poison."""


@pytest.fixture
async def worker(model_home: Path) -> AsyncIterator[EdgeWorker]:
    """A worker never started (no broker): its admission, inference and outputs are driven by hand."""
    settings = WorkerSettings(
        region=REGION,
        home=model_home,
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"),
        models=("embedding-scorer",),
        sample_fraction=1.0,
    )
    edge = EdgeWorker(settings, keyring=KeyRing({REGION: {1: bytes(32)}}), models=load_models(settings))
    yield edge
    await edge.stop()


def _sealed(worker: EdgeWorker, body: TensorBody, device: str = "dev-1") -> bytes:
    keyring = KeyRing({REGION: {1: bytes(32)}})
    return seal(
        body,
        device_key=keyring.device_key(REGION, device, 1),
        device_id=device,
        key_id=1,
        kind="embedding",
        model="embedding-scorer",
        capture_time_ms=int(time.time() * 1000),
    )


def _admit(worker: EdgeWorker, values: list[bytes]) -> list[Item]:
    items = []
    for offset, value in enumerate(values):
        record: ConsumerRecord[bytes, bytes] = ConsumerRecord(
            TP.topic, TP.partition, offset, 0, 0, b"dev-1", value, None, 5, len(value), ()
        )
        item, _ = worker._admission.admit(TP, 0, record, worker.keyring, time.monotonic(), time.time() * 1000)
        items.append(item)
    return items


def _embedding(first: float | None = None) -> TensorBody:
    x = load_dataset("embedding").X_test[0].astype(np.float32)
    if first is not None:
        x[0] = first
    return encode_tensor(x, "float16")


def _float16(value: float) -> TensorBody:
    data = np.full(30, 0.5, dtype="<f2")
    data[3] = value
    return TensorBody(data=data.tobytes(), dtype="float16", shape=(30,))


class _PoisonedSession:
    """The real session, except on inputs whose first feature is `MARK`: NaN scores or an exception."""

    def __init__(self, real: Any, *, raises: bool) -> None:
        self._real = real
        self._raises = raises
        self.providers_in_use = real.providers_in_use

    def run(self, batch: npt.NDArray[Any]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        poisoned = batch[:, 0] == np.float16(MARK)
        if self._raises and poisoned.any():
            raise ZeroDivisionError("a bug that only this input reaches")
        labels, probs = self._real.run(batch)
        probs = probs.copy()
        probs[poisoned] = np.nan
        return labels, probs


def _poison(worker: EdgeWorker, items: list[Item], *, raises: bool) -> None:
    for item in items:
        if item.model is not None:
            session = _PoisonedSession(item.model.session, raises=raises)
            item.model = dataclasses.replace(item.model, session=session)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
async def test_a_non_finite_embedding_is_refused_at_admission(worker: EdgeWorker, value: float) -> None:
    good, bad = _admit(worker, [_sealed(worker, _embedding()), _sealed(worker, _float16(value))])
    assert good.error is None
    assert good.tensor is not None
    assert bad.error is not None
    assert (bad.error.reason, bad.error.stage) == ("non_finite", "validate")
    assert bad.tensor is None


async def test_an_unexpected_error_at_admission_is_that_records_internal_dead_letter(
    worker: EdgeWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    def decode(body: TensorBody, **kw: Any) -> npt.NDArray[Any]:
        if body.data == _embedding(MARK).data:
            raise KeyError("a bug")
        return decode_tensor(body, **kw)

    monkeypatch.setattr("edgestream.workers.edge.admission.decode_tensor", decode)
    good, bad = _admit(worker, [_sealed(worker, _embedding()), _sealed(worker, _embedding(MARK))])
    assert good.error is None
    assert bad.error is not None
    assert bad.error.reason == "internal"
    headers = dict(_outputs_of(worker, [bad])[dlq_topic(REGION)][0][1])
    assert headers[dl.EXCEPTION_CLASS] == b"builtins.KeyError"
    assert b"a bug" not in headers[dl.EXCEPTION_MESSAGE], "no exception text: it may quote the input"


def _outputs_of(
    worker: EdgeWorker, items: list[Item]
) -> dict[str, list[tuple[bytes, list[tuple[str, bytes]]]]]:
    """Build the unit's outputs, as its commit has them (``commits.merge``: its summaries encoded); by
    topic, each output's value and headers."""
    worker._chains.start(chain_id(TP.topic, TP.partition), None, offset=0)
    built = worker._outputs.build(items, time.monotonic(), worker.keyring)
    work = merge([StagedUnit(items, built, "size")], {tp: part.epoch for tp, part in built.items()})
    by_topic: dict[str, list[tuple[bytes, list[tuple[str, bytes]]]]] = {}
    for output in work[TP].outputs:
        by_topic.setdefault(output.topic, []).append((output.value, list(output.headers)))
    assert work[TP].next_offset == max(it.offset for it in items) + 1
    return by_topic


@pytest.mark.parametrize(
    ("raises", "reason", "cls"), [(False, "non_finite", None), (True, "internal", "ZeroDivisionError")]
)
async def test_a_record_the_model_fails_on_is_dead_lettered_and_its_batch_is_answered(
    worker: EdgeWorker, raises: bool, reason: str, cls: str | None
) -> None:
    """NaN scores are ``non_finite``; an exception only this record's input raises is ``internal``."""
    items = _admit(worker, [_sealed(worker, _embedding(x)) for x in (None, MARK, 0.5, None)])
    _poison(worker, items, raises=raises)
    await worker._inference.infer(items)
    assert [it.error is None for it in items] == [True, False, True, True]
    error = items[1].error
    assert error is not None
    assert (error.reason, error.stage) == (reason, "infer")
    assert items[1].answer is None
    by_topic = _outputs_of(worker, items)
    assert len(by_topic[results_topic(REGION)]) == 3
    (letter,) = by_topic[dlq_topic(REGION)]
    headers = dict(letter[1])
    assert headers[dl.REASON] == reason.encode()
    if cls is not None:
        assert headers[dl.EXCEPTION_CLASS] == f"builtins.{cls}".encode()


async def test_building_one_records_outputs_fails_alone(worker: EdgeWorker) -> None:
    """A record whose result cannot be encoded, and one whose scores are NaN, among good ones: the first
    is dead-lettered ``internal`` (no result, no ok audit record, one dead-letter audit record), the
    others are answered; the audit chain has no gap and the summary counts what was published."""
    items = _admit(worker, [_sealed(worker, _embedding()) for _ in range(4)])
    for item in items:
        item.tensor = None
        item.answer = Answer(1, (0.1, 0.9), 1.0, 4)
    items[1].answer = Answer(2**64, (0.1, 0.9), 1.0, 4)  # msgpack cannot encode this label
    items[2].answer = Answer(0, (float("nan"), float("nan")), 1.0, 4)
    items[3].features = (0.5,) * 30
    by_topic = _outputs_of(worker, items)
    assert items[1].error is not None
    assert items[1].error.reason == "internal"
    results = [ResultRecord.from_bytes(v).request_id for v, _ in by_topic[results_topic(REGION)]]
    assert len(results) == 3
    assert items[1].envelope is not None
    assert items[1].envelope.request_id not in results
    audits = [AuditRecord.from_bytes(v) for v, _ in by_topic[audit_topic(REGION)]]
    assert [a.seq for a in audits] == [1, 2, 3, 4]
    assert [a.outcome for a in audits] == ["ok", "dead_letter", "ok", "ok"]
    (letter,) = by_topic[dlq_topic(REGION)]
    assert dict(letter[1])[dl.EXCEPTION_CLASS] == b"builtins.OverflowError"
    (summary_bytes, _), *_ = by_topic[SUMMARIES_TOPIC]
    summary = PartialSummary.from_bytes(summary_bytes)
    assert (summary.results, summary.dead_letters) == (3, {"internal": 1})


async def test_an_oversized_records_dead_letter_fits_the_producer_limit(worker: EdgeWorker) -> None:
    huge = bytes(PRODUCER_MAX_REQUEST_BYTES)
    (item,) = _admit(worker, [huge])
    assert item.error is not None
    assert item.error.reason == "oversized"
    (letter,) = _outputs_of(worker, [item])[dlq_topic(REGION)]
    value, headers = letter
    assert record_size(b"dev-1", value, headers) <= PRODUCER_MAX_REQUEST_BYTES
    assert dict(headers)[dl.ORIGINAL_SIZE] == str(len(huge)).encode()


async def test_an_unexpected_error_in_the_replay_and_rate_checks_stays_that_records(
    worker: EdgeWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = _admit(worker, [_sealed(worker, _embedding()), _sealed(worker, _embedding())])
    assert [item.error for item in items] == [None, None]
    real_check = worker._admission._rate.check
    calls: list[str] = []

    def check(device_id: str, now_s: float) -> None:
        calls.append(device_id)
        if len(calls) == 2:
            raise KeyError("a bug")
        real_check(device_id, now_s)

    monkeypatch.setattr(worker._admission._rate, "check", check)
    worker._admission.check(items)
    assert items[0].error is None
    assert items[1].error is not None
    assert items[1].error.reason == "internal"
    assert items[1].tensor is None


def _sealed_unchecked(device: str) -> bytes:
    """An authentic envelope under ``device``'s own key, sealed without the sender's checks: what a
    client that does not keep its id in normal form sends."""
    key = KeyRing({REGION: {1: bytes(32)}}).device_key(REGION, device, 1)
    now_ms = int(time.time() * 1000)
    header = Envelope(
        1,
        new_request_id(),
        device,
        now_ms,
        "embedding",
        "embedding-scorer",
        None,
        1,
        "none",
        os.urandom(12),
        b"",
    )
    ciphertext = AESGCM(key).encrypt(header.nonce, pack_body(_embedding()), aad(header))
    return encode_envelope(dataclasses.replace(header, ciphertext=ciphertext))


async def test_a_device_id_not_in_normal_form_is_dead_lettered_and_the_unit_answered(
    worker: EdgeWorker,
) -> None:
    """Contract section 3: a decomposed ``ü`` (not NFC) or a control character in the device id is
    refused as ``bad_device_id`` at decode, before any key is derived; the rest of the unit flows."""
    items = _admit(
        worker,
        [_sealed(worker, _embedding()), _sealed_unchecked("cam-u\u0308-7"), _sealed_unchecked("dev-\x1b[2J")],
    )
    assert [it.error.reason if it.error else "ok" for it in items] == ["ok", "bad_device_id", "bad_device_id"]
    assert [it.envelope is None for it in items] == [False, True, True]
    await worker._inference.infer(items)
    by_topic = _outputs_of(worker, items)
    assert len(by_topic[results_topic(REGION)]) == 1
    letters = by_topic[dlq_topic(REGION)]
    assert [dict(headers)[dl.REASON] for _, headers in letters] == [b"bad_device_id"] * 2
    assert [dict(headers)[dl.STAGE] for _, headers in letters] == [b"decode"] * 2
