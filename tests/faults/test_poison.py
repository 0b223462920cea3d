"""The poison corpus and the checker's judgement of it, without a broker: each record fails where its
label says by the contract's own functions, at the worker's default limits; the checker matches copies
sent to another partition or topic to the right input, accepts a truncated dead letter only when its
size and sha256 are its input's, and allows a flood record any one of its outcomes, never two.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections import Counter

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bench.faults.__main__ import merge_into
from bench.faults.checker import Verdict, check
from bench.faults.observe import Observed, Record
from bench.faults.poison import ALL_CATEGORIES, PoisonCorpus, poison_counts, poison_requirements
from bench.faults.records import FLOOD, LARGE_CATEGORIES, OK, CorpusRecord
from edgestream.pipeline.contract.cloud import PartialSummary
from edgestream.pipeline.contract.codec import decode_tensor
from edgestream.pipeline.contract.deadletter import (
    ORIGINAL_SHA256,
    ORIGINAL_SIZE,
    TRUNCATED,
    bounded_dead_letter,
    dead_letter_headers,
)
from edgestream.pipeline.contract.envelope import decode_envelope, open_envelope
from edgestream.pipeline.contract.limits import (
    BROKER_MESSAGE_MAX_BYTES,
    DEFAULT_MAX_ENVELOPE_BYTES,
    record_size,
)
from edgestream.pipeline.contract.partitioner import partition_for
from edgestream.pipeline.contract.records import AuditRecord, ResultRecord
from edgestream.pipeline.errors import (
    ContractError,
    KeyMismatch,
    ShapeMismatch,
    UnknownModel,
    WrongPartition,
    WrongTopic,
)
from edgestream.pipeline.models import spec
from edgestream.pipeline.security.keyring import KeyRing
from edgestream.topics.catalogue import edge_group, ingest_topic
from edgestream.workers.edge.settings import WorkerSettings
from edgestream.workers.local.fleet_settings import MODEL_FOR_KIND

VERSIONS = {name: 1 for name in MODEL_FOR_KIND.values()}
PARTITIONS = 3
"""Partitions of either ingest topic (the catalogue's)."""
DEFAULTS = WorkerSettings.model_fields


def _corpus(seed: int, keyring: KeyRing) -> PoisonCorpus:
    return PoisonCorpus("r", keyring, served_versions=VERSIONS, seed=seed)


def _fail_reason_by_the_library(record: CorpusRecord, keyring: KeyRing) -> str:
    """Where the contract's own functions refuse the record at the worker's DEFAULT limits, in the
    worker's order (decode, model, key, decrypt + body, input spec, placement, finite values)."""
    try:
        envelope = decode_envelope(record.value, max_envelope_bytes=DEFAULTS["max_envelope_bytes"].default)
        if envelope.model not in VERSIONS or envelope.model_version not in (None, VERSIONS[envelope.model]):
            raise UnknownModel(envelope.model, envelope.model_version)
        model = spec(envelope.model)
        if envelope.kind != model.kind:
            raise ShapeMismatch(f"{envelope.kind} for {envelope.model}")
        key = keyring.device_key("r", envelope.device_id, envelope.key_id)
        body = open_envelope(envelope, key, max_body_bytes=DEFAULTS["max_body_bytes"].default)
        model.check_input(body.dtype, tuple(body.shape))
        device = envelope.device_id.encode()
        if record.key != device:
            raise KeyMismatch(envelope.device_id)
        expected = partition_for(device, PARTITIONS)
        if record.partition not in (None, expected):
            raise WrongPartition(record.partition, expected)
        if record.kind != envelope.kind:
            raise WrongTopic(ingest_topic("r", record.kind), envelope.kind)
        decode_tensor(body)
    except ContractError as err:
        return err.reason
    return OK


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
@example(seed=20261123)
def test_every_poison_record_fails_where_its_label_says_at_the_default_limits(seed: int) -> None:
    keyring = KeyRing({"r": {1: os.urandom(32), 2: os.urandom(32)}})
    records = list(_corpus(seed, keyring).stream(good=40, bad=len(ALL_CATEGORIES) + 20, flood=10))
    assert {r.category for r in records} == {"good", FLOOD, *ALL_CATEGORIES}
    assert sum(r.category in LARGE_CATEGORIES for r in records) == len(LARGE_CATEGORIES), "a budget"
    assert len({r.test_id for r in records}) == len(records)
    limit = DEFAULT_MAX_ENVELOPE_BYTES
    for record in records:
        # stale, replayed and the flood's fate are the worker's own checks, after the contract's.
        expected = OK if record.expect in ("stale", "replayed", FLOOD) else record.expect
        got = _fail_reason_by_the_library(record, keyring)
        assert got == expected, f"{record.category}: labelled {record.expect}, the library says {got}"
        size = len(record.value)
        if record.category == "near_limit":
            assert limit - 2048 <= size <= limit
        if record.category in ("over_limit", "over_limit_truncated"):
            assert size > limit
        if record.category == "over_limit_truncated":
            whole = bounded_dead_letter(record.key, record.value, _headers(record, 0, "oversized"))
            assert whole[1] != record.value, "its dead letter whole would not fit: it is truncated"
        assert record_size(record.key, record.value, ()) <= BROKER_MESSAGE_MAX_BYTES, "the broker takes it"


def test_the_flood_is_one_device_inside_the_future_skew_and_nobody_else_is_it() -> None:
    keyring = KeyRing({"r": {1: os.urandom(32), 2: os.urandom(32)}})
    corpus = _corpus(7, keyring)
    records = list(corpus.stream(good=200, bad=len(ALL_CATEGORIES), flood=60, flood_bursts=3))
    flood = [r for r in records if r.category == FLOOD]
    assert len(flood) == 60
    assert {r.key for r in flood} == {corpus.flood_device.encode()}
    assert all(r.key != corpus.flood_device.encode() for r in records if r.category != FLOOD)
    skew_ms = DEFAULTS["max_future_skew_ms"].default
    for r in flood:
        envelope = decode_envelope(r.value, max_envelope_bytes=DEFAULT_MAX_ENVELOPE_BYTES)
        sealed_ms = int.from_bytes(envelope.request_id[:6], "big")  # a UUIDv7's time: when it was sealed
        ahead_ms = envelope.capture_time_ms - sealed_ms
        assert skew_ms - 1000 <= ahead_ms <= skew_ms - 200, ahead_ms
    runs = [len(run) for run in _runs([r.category == FLOOD for r in records]) if run[0]]
    assert len(runs) <= 3, "in bursts"
    assert sum(runs) == 60


def _runs(flags: list[bool]) -> list[list[bool]]:
    out: list[list[bool]] = []
    for flag in flags:
        if out and out[-1][0] == flag:
            out[-1].append(flag)
        else:
            out.append([flag])
    return out


def _headers(record: CorpusRecord, offset: int, reason: str) -> list[tuple[str, bytes]]:
    error = type("Refused", (ContractError,), {"reason": reason})("refused")
    return dead_letter_headers(
        error=error,
        origin_topic=ingest_topic("r", record.kind),
        origin_partition=record.partition or 0,
        origin_offset=offset,
        origin_timestamp_ms=0,
        group_id=edge_group("r"),
        worker_id="w",
        key_id=None,
        attempt=1,
        now_ms=0,
    )


def _ingest(record: CorpusRecord, offset: int) -> Record:
    return Record(ingest_topic("r", record.kind), record.partition or 0, offset, record.key, record.value, ())


def _letter(record: CorpusRecord, offset: int, reason: str, dlq_offset: int) -> Record:
    key, value, headers = bounded_dead_letter(record.key, record.value, _headers(record, offset, reason))
    return Record("edge.r.dlq", 0, dlq_offset, key, value, headers)


def _answer(record: CorpusRecord) -> tuple[Record, Record]:
    assert record.request_id is not None
    model = MODEL_FOR_KIND[record.kind]
    result = ResultRecord(
        record.request_id, record.key.decode(), model, 1, 0, (1.0,), 0.0, 0.0, 0.0, 1, "w", "r", 0
    )
    audit = AuditRecord(0, record.request_id, "w", "r", record.key.decode(), model, 1, "ok", None, 0.0)
    return (
        Record("edge.r.results", 0, 0, record.key, result.to_bytes(), ()),
        Record("edge.r.audit", 0, 0, record.request_id, audit.to_bytes(), ()),
    )


def _dl_audit(record: CorpusRecord, reason: str) -> Record:
    audit = AuditRecord(0, record.request_id, "w", "r", None, None, None, "dead_letter", reason, 0.0)
    return Record("edge.r.audit", 0, 0, record.request_id, audit.to_bytes(), ())


def test_the_checker_judges_misplaced_copies_truncated_letters_and_the_flood() -> None:
    """The original of a copy sent to another partition is on partition 1, the copy on partition 0: read
    back in partition order, a match that ignores partitions gives the copy's dead letter to the
    original. A truncated dead letter is its input's only when its size and sha256 are; a flood record
    may get any one of its outcomes, not another reason."""
    keyring = KeyRing({"r": {1: b"\x01" * 32, 2: b"\x02" * 32}})
    corpus = _corpus(5, keyring)
    goods = [corpus.good(kind="embedding") for _ in range(3)]
    original = dataclasses.replace(goods[0], partition=1)
    copy = dataclasses.replace(
        original, test_id=50, expect="wrong_partition", category="replay_other_partition", partition=0
    )
    big = corpus._bad_over_limit_truncated(51)  # the category's draw, called directly
    big = dataclasses.replace(big, kind="embedding", partition=0)
    flood = [dataclasses.replace(corpus.flood(), kind="embedding", partition=0) for _ in range(3)]
    ledger = {r.test_id: r for r in [original, copy, big, *goods[1:], *flood]}
    ingest = [_ingest(original, 0), _ingest(copy, 0), _ingest(big, 1)]
    ingest += [_ingest(r, 2 + i) for i, r in enumerate([*goods[1:], *flood])]
    answered = [_answer(r) for r in [original, *goods[1:], flood[0]]]
    dlq = [
        _letter(copy, 0, "wrong_partition", 0),
        _letter(big, 1, "oversized", 1),
        _letter(flood[1], 5, "rate_limited", 2),
        _letter(flood[2], 6, "stale", 3),
    ]
    audits = [a for _, a in answered] + [
        _dl_audit(r, reason)
        for r, reason in [(copy, "wrong_partition"), (flood[1], "rate_limited"), (flood[2], "stale")]
    ]
    summary = _summary(len(answered))
    verdict = check(
        ledger,
        Observed(ingest, [r for r, _ in answered], audits, dlq, {}, {}, [summary]),
        max_envelope_bytes=DEFAULT_MAX_ENVELOPE_BYTES,
    )
    assert verdict.violations() == [], (verdict.violations(), verdict.examples)
    assert verdict.truncated_dead_letters == 1
    assert verdict.by_category[FLOOD] == Counter({"result": 1, "rate_limited": 1, "stale": 1})
    counts = poison_counts(verdict)
    assert counts["flood_outcomes"] == {"rate_limited": 1, "result": 1, "stale": 1}
    assert counts["hostile_by_reason"] == {"oversized": 1, "wrong_partition": 1}

    # A truncated copy whose sha256 is not its input's; a flood record refused for another reason.
    forged = [(k, b"0" * 64 if k == ORIGINAL_SHA256 else v) for k, v in dlq[1].headers]
    wrong = [dlq[0], dlq[1]._replace(headers=tuple(forged)), _letter(flood[1], 5, "bad_tag", 2), dlq[3]]
    broken = check(
        ledger,
        Observed(ingest, [r for r, _ in answered], audits, wrong, {}, {}, [summary]),
        max_envelope_bytes=DEFAULT_MAX_ENVELOPE_BYTES,
    )
    assert broken.bad_origin == 1
    assert broken.wrong_reason == Counter(
        {"flood: expected one of ['rate_limited', 'result', 'stale'], got bad_tag": 1}
    )
    assert dict(dlq[1].headers)[TRUNCATED] == b"value"
    assert dict(dlq[1].headers)[ORIGINAL_SIZE] == str(len(big.value)).encode()
    assert hashlib.sha256(big.value).hexdigest().encode() == dict(dlq[1].headers)[ORIGINAL_SHA256]


def _summary(results: int) -> PartialSummary:
    summary = PartialSummary("r", "node", "embedding-scorer", 1, 0)
    for _ in range(results):
        summary.add_result(1, 0.9, 12.0)
    return summary


@pytest.mark.parametrize(
    ("extra", "exits", "codes", "needle"),
    [
        ({"rewinds": 1}, [], {"w.1": 0}, "rewinds"),
        ({"stats_rewinds": 2}, [], {"w.1": 0}, "rewinds"),
        ({}, ["w.1: exit 1: ValueError"], {"w.1": 1, "w.2": 0}, "worker exits"),
        ({"aborted_outputs": {"dlq": 3}}, [], {"w.1": 0}, "aborted"),
    ],
)
def test_the_poison_requirements_name_each_exit_rewind_and_abort(
    extra: dict[str, object], exits: list[str], codes: dict[str, int], needle: str
) -> None:
    verdict = Verdict(written=5)
    verdict.by_category = {c: Counter({"x": 1}) for c in ("good", FLOOD, *ALL_CATEGORIES)}
    fine = {"incarnations": 1, "stats_consumed": 5, "rewinds": 0, "stats_rewinds": 0, "aborted_outputs": {}}
    assert poison_requirements(verdict, fine, [], {"w.1": 0}) == []
    broken = poison_requirements(verdict, {**fine, **extra}, exits, codes)
    assert any(needle in line for line in broken), broken


def test_a_merged_faults_document_keeps_the_reports_not_rerun_and_names_their_run() -> None:
    earlier = {
        "generated_at": "2026-11-23T19:11:40+00:00",
        "source": {"commit": "abc"},
        "settings": {"scenarios": ["kill9", "hostile"]},
        "scenarios": [{"name": "kill -9", "violations": []}, {"name": "hostile input", "violations": []}],
    }
    rerun = {"generated_at": "now", "scenarios": [{"name": "hostile input", "violations": ["lost: 1"]}]}
    merged = merge_into(
        earlier, {**rerun, "scenarios": [*rerun["scenarios"], {"name": "poison", "violations": []}]}
    )
    assert [r["name"] for r in merged["scenarios"]] == ["kill -9", "hostile input", "poison"]
    assert merged["scenarios"][1]["violations"] == ["lost: 1"], "the rerun replaces the earlier report"
    assert merged["merged"] == [
        {
            "scenario": "kill -9",
            "generated_at": "2026-11-23T19:11:40+00:00",
            "commit": "abc",
            "settings": earlier["settings"],
        }
    ]
    assert merged["invariant_holds"] is False
    again = merge_into(merged, {"generated_at": "later", "scenarios": [{"name": "poison", "violations": []}]})
    assert again["merged"][0] == merged["merged"][0], "a report kept twice still names its own run"
    assert [m["scenario"] for m in again["merged"]] == ["kill -9", "hostile input"]
