"""Exactly-once under the faults a real edge node sees, checked on the read_committed view.

Each scenario runs ``python -m edgestream worker`` processes on a fresh region of the session broker
(the broker restart starts a broker of its own) and checks, per input: exactly one result or exactly one
dead letter (with the expected reason and its origin), never both, never neither, and one audit record
per result. ``EDGESTREAM_FAULTS_SEED`` replays a run (every report names its seed); ``python -m
bench.faults`` runs the same scenarios longer.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.faults.checker import REFUSED_FOR_SIZE, check
from bench.faults.corpus import Corpus
from bench.faults.env import (
    MAX_BODY_BYTES,
    MAX_ENVELOPE_BYTES,
    FaultEnv,
    FaultRegion,
    make_corpus,
    make_region,
    prepare_home,
    wait_for,
)
from bench.faults.observe import Observed, Record, observe
from bench.faults.poison import ALL_CATEGORIES
from bench.faults.records import CATEGORIES, FLOOD, LARGE_CATEGORIES, OK, CorpusRecord
from bench.faults.scenarios import (
    ScenarioReport,
    broker_restart,
    hostile,
    kill9,
    poison,
    rebalance,
    shrunk,
    zombie,
)
from bench.faults.traffic import wait_drained
from edgestream.pipeline import kafka
from edgestream.pipeline.contract.cloud import PartialSummary
from edgestream.pipeline.contract.deadletter import dead_letter_headers
from edgestream.pipeline.contract.envelope import decode_envelope, open_envelope
from edgestream.pipeline.contract.records import AuditRecord, ResultRecord
from edgestream.pipeline.errors import ContractError, ReplayedRequest, ShapeMismatch, UnknownModel
from edgestream.pipeline.models import spec
from edgestream.pipeline.security.keyring import KeyRing
from edgestream.pipeline.serving.served import load_models
from edgestream.pipeline.settings import KafkaSettings
from edgestream.topics.catalogue import edge_group, ingest_topic
from edgestream.workers.edge.settings import Transactions, WorkerSettings
from edgestream.workers.edge.settlement import Settlement
from edgestream.workers.edge.sinks import TransactionalSink
from edgestream.workers.edge.txnsink import WorkerTransactionalSink
from edgestream.workers.edge.worker import EdgeWorker
from edgestream.workers.local.broker.state import BrokerState
from edgestream.workers.local.fleet_settings import MODEL_FOR_KIND

SEED = int(os.environ.get("EDGESTREAM_FAULTS_SEED", "20261123"))
"""Seeds kill timings and the hostile corpus; every report names it."""
VERSIONS = {name: 1 for name in MODEL_FOR_KIND.values()}


@pytest.fixture(scope="module")
def fault_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    home = tmp_path_factory.mktemp("faults-home")
    return home, prepare_home(home)


@pytest.fixture
def fault_env(
    bootstrap: KafkaSettings,
    kafka_broker: BrokerState,
    fault_home: tuple[Path, dict[str, int]],
    tmp_path: Path,
) -> FaultEnv:
    home, versions = fault_home
    return FaultEnv(
        bootstrap=bootstrap,
        home=home,
        run_dir=tmp_path,
        served_versions=versions,
        tls_root=kafka_broker.tls_root,
        seed=SEED,
    )


def assert_exactly_once(report: ScenarioReport) -> None:
    print(report.summary())
    assert report.violations() == [], (
        f"{report.name}: the invariant is broken: {report.violations()}\n"
        f"examples: {report.verdict.examples}\n{report.summary()}"
    )


# -- the scenarios ------------------------------------------------------------------------------


async def test_kill_9_mid_stream_then_restart_loses_and_doubles_nothing(fault_env: FaultEnv) -> None:
    report = await kill9(fault_env, cycles=5, rate_per_s=100)
    assert_exactly_once(report)
    assert report.worker_restarts == 5
    assert report.unexpected_exits == []
    assert report.verdict.not_written == 0
    assert len(report.extra["results_by_node"]) == 6, "each incarnation committed work before its kill"


async def test_a_zombie_woken_after_its_partitions_moved_is_fenced_and_doubles_nothing(
    fault_env: FaultEnv,
) -> None:
    report = await zombie(fault_env, rate_per_s=100)
    assert_exactly_once(report)
    extra = report.extra
    fenced_exit = extra["zombie_exit_code"] not in (None, 0) and extra["zombie_log_says_fenced"]
    # per_worker: the group coordinator refused the zombie's stale generation; it rejoined as a new
    # member and may have answered records of its new assignment since.
    refused = extra["zombie_log_says_refused"]
    assert fenced_exit or refused or extra["zombie_results_after_resume"] == 0, extra
    assert report.unexpected_exits == [], "the live worker rode out the takeover"


async def test_scaling_one_to_three_to_one_under_traffic_loses_and_doubles_nothing(
    fault_env: FaultEnv,
) -> None:
    report = await rebalance(fault_env, rate_per_s=100)
    assert_exactly_once(report)
    assert report.extra["leave_exit_codes"] == [0, 0], "SIGTERM is the graceful path"
    assert report.unexpected_exits == []
    assert report.worker_restarts == 0


async def test_a_results_topic_lowered_below_a_result_stops_nothing_and_loses_nothing(
    fault_env: FaultEnv,
) -> None:
    """The shrunk scenario: the records answered while the results topic refuses every result are
    dead-lettered (one outcome each, ``internal``); the others answered; the worker never exits."""
    report = await shrunk(fault_env, rate_per_s=100, lowered_s=2.0)
    assert_exactly_once(report)
    assert report.verdict.refused_good > 0, "the window refused some results"
    assert report.verdict.results > 0
    assert report.unexpected_exits == []
    assert report.worker_restarts == 0


async def test_a_broker_restart_under_traffic_loses_and_doubles_nothing(fault_env: FaultEnv) -> None:
    """The broker stops (SIGTERM) mid-stream and comes back on the same ports while two workers run.

    The trap this holds against: right after the restart the group coordinator is still loading and
    transactions may be in doubt, and aiokafka's committed() answers "none" or an older offset; a worker
    reading from there answers committed records again (they came back as replays). Inputs held up past
    the age limit by the outage may be dead-lettered as stale, once; nothing else is tolerated."""
    report = await broker_restart(fault_env, rate_per_s=100, restarts=1)
    assert_exactly_once(report)
    assert report.verdict.results > 0
    assert report.extra["timings"][0]["first_commit_after_s"] < 60, report.extra["timings"]
    # The fast replies go outside the transactions, sent again through the outage (a lost connection
    # may pass): every committed result's request got its reply, unless its worker died meanwhile.
    replies = report.extra["replies"]
    assert replies["results"] == report.verdict.results, replies
    assert replies["malformed"] == 0, replies
    if report.worker_restarts == 0:
        assert replies["missing"] == 0, replies


async def test_a_hostile_corpus_is_dead_lettered_by_reason_and_the_worker_never_restarts(
    fault_env: FaultEnv,
) -> None:
    report = await hostile(fault_env, good=1500, bad=1000)
    assert_exactly_once(report)
    v = report.verdict
    assert set(v.by_category) == {"good", *CATEGORIES}, "every category was sent"
    assert sum(n for c, counts in v.by_category.items() if c != "good" for n in counts.values()) == 1000
    assert v.results == v.by_category["good"]["result"] == 1500
    extra = report.extra
    assert extra["incarnations"] == 1
    assert report.unexpected_exits == []
    assert extra["pid_at_ready"] == extra["pid_at_exit"], "the same process from start to SIGTERM"
    assert report.exit_codes == {"w.1": 0}
    assert extra["stats_consumed"] == v.written, "its stats at SIGTERM: consumed everything written"


async def test_poison_with_default_settings_every_hostile_kind_dead_lettered_and_no_worker_exit_or_rewind(
    fault_env: FaultEnv,
) -> None:
    """Issue 12's poison scenario, CI-sized: one worker with the worker's DEFAULT settings (1 MiB
    envelope limit, 50/s per device, burst 100); every hostile kind (NaN and +Inf embeddings, envelopes
    at and over the default limit, misplaced records and copies, the 35 hostile categories) and one
    device's future-skewed flood, among good records of 500 other devices on the same partitions; the
    traffic's batches lz4-compressed, as a device's Kafka client may send them."""
    report = await poison(fault_env, good=1200, bad=600, flood=400, flood_bursts=2, large=7, rate_per_s=600)
    assert_exactly_once(report)  # every good one answered once, every hostile one with its reason
    v, extra = report.verdict, report.extra
    assert set(v.by_category) == {"good", FLOOD, *ALL_CATEGORIES}
    assert v.by_category["good"] == Counter({"result": 1200})
    assert extra["hostile_written"] == 600
    assert extra["large_written"] == 7
    assert sum(v.by_category[c]["non_finite"] for c in ("nan_float16", "inf_float16")) >= 2
    assert v.truncated_dead_letters >= 1, "the envelopes near the producer's limit got a truncated copy"
    assert v.by_category["near_limit"] == Counter({"bad_shape": v.by_category["near_limit"].total()})
    flood = extra["flood_outcomes"]
    assert sum(flood.values()) == 400
    assert flood.get("result", 0) >= 100, "the first 100 of the flood are within the device's burst"
    assert flood.get("rate_limited", 0) > 0, "a burst of 200 is over a device's rate"
    assert extra["worker_settings"] == {}, "the worker's own defaults"
    assert extra["compression"] == "lz4"
    assert extra["max_envelope_bytes"] == WorkerSettings.model_fields["max_envelope_bytes"].default
    assert extra["rewinds"] == extra["stats_rewinds"] == 0
    assert report.unexpected_exits == []
    assert report.exit_codes == {"w.1": 0}
    assert set(LARGE_CATEGORIES) <= set(v.by_category)


async def _backlog(fault_env: FaultEnv, region: FaultRegion, count: int) -> dict[int, CorpusRecord]:
    """``count`` good embeddings of one device (so one partition), written before any worker runs."""
    corpus = make_corpus(fault_env, region)
    ledger: dict[int, CorpusRecord] = {}
    async with kafka.started(kafka.producer(region.bootstrap, "test-faults")) as producer:
        for _ in range(count):
            record = corpus.good(device="dev-backlog", kind="embedding")
            ledger[record.test_id] = record
            await producer.send(record.topic(region.name), record.value, key=record.key)
        await producer.flush()
    return ledger


TRANSACTIONS: list[Transactions] = ["per_partition", "per_worker"]
"""Both exactly-once sinks, for the in-process tests below."""


def _commit_hook(transactions: Transactions) -> tuple[type[Any], str]:
    """The sink class and its method that commits: ``(self, partition or producer, work)``."""
    if transactions == "per_worker":
        return WorkerTransactionalSink, "_transaction"
    return TransactionalSink, "_commit"


def _backlog_worker(
    fault_env: FaultEnv, region: FaultRegion, node_id: str, transactions: Transactions = "per_partition"
) -> EdgeWorker:
    settings = WorkerSettings(
        region=region.name,
        home=fault_env.home,
        key_file=region.key_file,
        kafka=region.worker_kafka,
        node_id=node_id,
        device_rate_per_s=100_000,
        device_burst=100_000,
        max_batch=32,
        max_wait_ms=50.0,
        retry_backoff_max_ms=100,
        transactions=transactions,
    )
    return EdgeWorker(settings, keyring=region.keyring, models=load_models(settings))


async def _run_until_drained(worker: EdgeWorker, region: FaultRegion) -> None:
    await worker.start()
    stop = asyncio.Event()
    run = asyncio.create_task(worker.run(stop))
    try:
        await wait_drained(region, timeout_s=60)
    finally:
        stop.set()
        await run
        await worker.stop()


@pytest.mark.parametrize("transactions", TRANSACTIONS)
async def test_sigterm_while_a_unit_commits_loses_and_doubles_none_of_its_records(
    fault_env: FaultEnv, monkeypatch: pytest.MonkeyPatch, transactions: Transactions
) -> None:
    """SIGTERM lands while a unit's transaction is on the wire, with later units already closed behind
    it. The worker must finish that transaction (not cancel it half-way), commit or leave the later
    ones whole, and exit cleanly; a second worker then answers the rest. Every record exactly once."""
    region = await make_region(fault_env)
    ledger = await _backlog(fault_env, region, 300)
    stop = asyncio.Event()
    stopped_during: list[object] = []
    sink_class, method = _commit_hook(transactions)
    real_commit = getattr(sink_class, method)

    async def stop_arrives_mid_commit(self: Any, on: Any, work: Any) -> None:
        if not stopped_during:
            stopped_during.append(work)
            stop.set()  # the stopper task runs at the commit's first network wait
        await real_commit(self, on, work)

    monkeypatch.setattr(sink_class, method, stop_arrives_mid_commit)
    first = _backlog_worker(fault_env, region, "sigterm-first", transactions)
    await first.start()
    try:
        await first.run(stop)  # returns (no exception) once the stop is handled
    finally:
        await first.stop()
    assert stopped_during, "the stop arrived while a transaction was in flight"
    assert first.stats.units >= 1, f"the unit in flight committed: {first.stats.as_dict()}"
    answered_by_first = first.stats.results
    monkeypatch.setattr(sink_class, method, real_commit)
    second = _backlog_worker(fault_env, region, "sigterm-second", transactions)
    await _run_until_drained(second, region)
    verdict = check(ledger, await observe(region))
    assert verdict.violations() == [], (
        f"{verdict.violations()}; first {first.stats.as_dict()}; second {second.stats.as_dict()}; "
        f"examples {verdict.examples[:5]}"
    )
    assert answered_by_first + second.stats.results == len(ledger)


@pytest.mark.parametrize("transactions", TRANSACTIONS)
async def test_a_failed_transaction_lets_no_later_unit_of_its_partition_commit_first(
    fault_env: FaultEnv, monkeypatch: pytest.MonkeyPatch, transactions: Transactions
) -> None:
    """A backlog on one partition closes several full units at once; the first one's transaction fails
    (as when the broker goes away). The partition must be re-read from its committed offset before
    anything later of it commits: no record skipped, none answered twice."""
    region = await make_region(fault_env)
    ledger = await _backlog(fault_env, region, 160)  # its first fetch closes 5 full units
    failures: list[TopicPartition] = []
    sink_class, method = _commit_hook(transactions)
    real_commit = getattr(sink_class, method)

    async def first_transaction_fails(self: Any, on: Any, work: Any) -> None:
        if not failures:
            failures.extend([on] if isinstance(on, TopicPartition) else work)  # per_worker: the unit's
            raise KafkaConnectionError("injected: the broker went away before this transaction began")
        await real_commit(self, on, work)

    real_rewind = Settlement._rewind

    async def rewind_until_positioned_again(self: Settlement, tp: TopicPartition, err: BaseException) -> None:
        # The worst case, made certain: the fetch loop positions the partition again before the units
        # already closed behind the failed one are processed. Those hold records of the old position.
        await real_rewind(self, tp, err)
        await wait_for(
            "the partition is positioned again", lambda: tp in self._partitions.serving, 10, interval_s=0.01
        )
        repositioned.append(tp)

    repositioned: list[TopicPartition] = []
    monkeypatch.setattr(sink_class, method, first_transaction_fails)
    monkeypatch.setattr(Settlement, "_rewind", rewind_until_positioned_again)
    worker = _backlog_worker(fault_env, region, "backlog", transactions)
    await _run_until_drained(worker, region)
    assert failures, "the injected failure happened"
    assert repositioned == failures, "the partition was positioned again before the later units ran"
    verdict = check(ledger, await observe(region))
    assert verdict.violations() == [], (
        f"{verdict.violations()}; worker {worker.stats.as_dict()}; examples {verdict.examples[:5]}"
    )


# -- the corpus and the checker, without a broker -------------------------------------------------


def _fail_reason_by_the_library(record: CorpusRecord, keyring: KeyRing, region: str) -> str:
    """Where the contract's own functions refuse the record, in the worker's order (decode, model,
    key, decrypt + decompress + body, input spec); ``ok`` when they accept it."""
    try:
        envelope = decode_envelope(record.value, max_envelope_bytes=MAX_ENVELOPE_BYTES)
        if envelope.model not in VERSIONS or envelope.model_version not in (None, VERSIONS[envelope.model]):
            raise UnknownModel(envelope.model, envelope.model_version)
        model = spec(envelope.model)
        if envelope.kind != model.kind:
            raise ShapeMismatch(f"{envelope.kind} for {envelope.model}")
        key = keyring.device_key(region, envelope.device_id, envelope.key_id)
        body = open_envelope(envelope, key, max_body_bytes=MAX_BODY_BYTES)
        model.check_input(body.dtype, tuple(body.shape))
    except ContractError as err:
        return err.reason
    return OK


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_every_corpus_record_fails_where_its_label_says(seed: int) -> None:
    keyring = KeyRing({"r": {1: os.urandom(32), 2: os.urandom(32)}})
    corpus = Corpus(
        "r",
        keyring,
        served_versions=VERSIONS,
        seed=seed,
        devices=40,
        max_envelope_bytes=MAX_ENVELOPE_BYTES,
        max_body_bytes=MAX_BODY_BYTES,
        max_age_ms=60_000,
    )
    records = list(corpus.stream(good=30, bad=2 * len(CATEGORIES)))
    assert {r.category for r in records} == {"good", *CATEGORIES}
    assert len({r.test_id for r in records}) == len(records)
    for record in records:
        # stale and replayed are the worker's own checks, after the contract's functions accept.
        expected = OK if record.expect in ("stale", "replayed") else record.expect
        got = _fail_reason_by_the_library(record, keyring, "r")
        assert got == expected, f"{record.category}: labelled {record.expect}, the library says {got}"
        if record.expect == OK:
            assert len(record.value) <= MAX_ENVELOPE_BYTES
            assert record.request_id is not None


def _dead_letter(
    record: CorpusRecord, offset: int, reason: str, dlq_offset: int, message: str = "refused"
) -> Record:
    error = type("Refused", (ContractError,), {"reason": reason})(message)
    headers = dead_letter_headers(
        error=error,
        origin_topic=ingest_topic("r", record.kind),
        origin_partition=0,
        origin_offset=offset,
        origin_timestamp_ms=0,
        group_id=edge_group("r"),
        worker_id="w",
        key_id=None,
        attempt=1,
        now_ms=0,
    )
    return Record("edge.r.dlq", 0, dlq_offset, record.key, record.value, headers)


def _result(record: CorpusRecord, offset: int, node: str = "w") -> tuple[Record, Record]:
    assert record.request_id is not None
    model = MODEL_FOR_KIND[record.kind]
    result = ResultRecord(
        record.request_id, record.key.decode(), model, 1, 0, (1.0,), 0.0, 0.0, 0.0, 1, node, "r", 0
    )
    audit = AuditRecord(0, record.request_id, node, "r", record.key.decode(), model, 1, "ok", None, 0.0)
    return (
        Record("edge.r.results", 0, offset, record.key, result.to_bytes(), ()),
        Record("edge.r.audit", 0, offset, record.request_id, audit.to_bytes(), ()),
    )


def _dead_letter_audit(record: CorpusRecord, reason: str) -> Record:
    audit = AuditRecord(0, record.request_id, "w", "r", None, None, None, "dead_letter", reason, 0.0)
    return Record("edge.r.audit", 0, 0, record.request_id, audit.to_bytes(), ())


def test_the_checker_counts_every_way_the_invariant_breaks() -> None:
    keyring = KeyRing({"r": {1: b"\x01" * 32, 2: b"\x02" * 32}})
    corpus = Corpus(
        "r",
        keyring,
        served_versions=VERSIONS,
        seed=5,
        devices=3,
        max_envelope_bytes=MAX_ENVELOPE_BYTES,
        max_body_bytes=MAX_BODY_BYTES,
        max_age_ms=60_000,
    )
    goods = [corpus.good(kind="embedding") for _ in range(6)]
    garbage = CorpusRecord(99, "embedding", b"dev", b"\xc1garbage", "undecodable", "random_bytes", None)
    replay = CorpusRecord(
        100, "embedding", goods[0].key, goods[0].value, "replayed", "replayed", goods[0].request_id
    )
    ledger = {r.test_id: r for r in [*goods, garbage, replay]}
    sent = [*goods, garbage, replay]
    ingest = [Record(ingest_topic("r", "embedding"), 0, i, r.key, r.value, ()) for i, r in enumerate(sent)]
    ok = [_result(goods[0], 0), _result(goods[1], 1), _result(goods[3], 2)]  # goods[2]: lost
    ok.append(_result(goods[3], 3, node="zombie"))  # goods[3]: a second result
    ok.append(_result(goods[4], 4))  # goods[4]: a result and a dead letter
    results = [r for r, _ in ok]
    audits = [a for _, a in ok][:-1]  # the last result has no audit record
    dlq = [
        _dead_letter(goods[4], 4, "stale", 0),
        _dead_letter(goods[5], 5, "replayed", 1),  # sent once: a false replay
        _dead_letter(garbage, 6, "bad_tag", 2),  # the wrong reason
        _dead_letter(replay, 7, "replayed", 3),  # right
        _dead_letter(replay, 3, "replayed", 4),  # origin offset 3 holds other bytes
    ]
    verdict = check(ledger, Observed(ingest, results, audits, dlq, {}, {}))
    assert verdict.lost == 1
    assert verdict.both == 1
    assert verdict.duplicated == 2  # the second result, and the result beside a dead letter
    assert verdict.false_replays == 1
    assert verdict.bad_origin == 1
    assert verdict.wrong_reason == Counter(
        {
            "good: expected result, got stale": 1,
            "good: expected result, got replayed": 1,
            "random_bytes: expected undecodable, got bad_tag": 1,
        }
    )
    assert verdict.audit_problems["results without their audit record"] == 1
    assert verdict.audit_problems["dead letters without their audit record"] == 4
    assert verdict.dead_letters == Counter({"replayed": 3, "stale": 1, "bad_tag": 1})
    assert len(verdict.violations()) >= 7
    assert "cloud summaries count 0 results, the results topic has 5" in verdict.violations()

    clean = check(
        ledger,
        Observed(
            ingest,
            [r for r, _ in ok[:3]] + [_result(goods[4], 4)[0], _result(goods[5], 5)[0]],
            [a for _, a in ok[:3]]
            + [_result(goods[4], 4)[1], _result(goods[5], 5)[1]]
            + [_dead_letter_audit(goods[2], "stale"), _dead_letter_audit(replay, "replayed")],
            [
                _dead_letter(goods[2], 2, "stale", 0),
                _dead_letter(garbage, 6, "undecodable", 1),
                _dead_letter(replay, 7, "replayed", 2),
            ],
            {},
            {},
            [_summary(5)],
        ),
        tolerate_stale=True,
    )
    assert clean.violations() == []
    assert clean.stale_good == 1
    assert clean.lost == 0


def test_where_the_results_topic_was_lowered_a_good_input_may_be_dead_lettered_internal_once() -> None:
    """The shrunk scenario: a good input whose result the cluster refused for its size has one
    ``internal`` dead letter, the right outcome there and only there."""
    keyring = KeyRing({"r": {1: b"\x01" * 32, 2: b"\x02" * 32}})
    corpus = Corpus(
        "r", keyring, served_versions=VERSIONS, seed=6, devices=2, max_envelope_bytes=MAX_ENVELOPE_BYTES,
        max_body_bytes=MAX_BODY_BYTES, max_age_ms=60_000,
    )  # fmt: skip
    goods = [corpus.good(kind="embedding") for _ in range(2)]
    ledger = {r.test_id: r for r in goods}
    ingest = [Record(ingest_topic("r", "embedding"), 0, i, r.key, r.value, ()) for i, r in enumerate(goods)]
    answered, audit = _result(goods[0], 0)
    refused = _dead_letter(goods[1], 1, "internal", 0, f"publishing its output: {REFUSED_FOR_SIZE}")
    other = _dead_letter(goods[1], 1, "internal", 0, "building its outputs")
    audits = [audit, _dead_letter_audit(goods[1], "internal")]
    observed = Observed(ingest, [answered], audits, [refused], {}, {}, [_summary(1)])
    clean = check(ledger, observed, tolerate_refused=True)
    assert clean.violations() == []
    assert clean.refused_good == 1
    assert check(ledger, observed).wrong_reason == Counter({"good: expected result, got internal": 1})
    observed.dlq[:] = [other]
    assert check(ledger, observed, tolerate_refused=True).refused_good == 0


def _summary(results: int) -> PartialSummary:
    summary = PartialSummary("r", "node", "embedding-scorer", 1, 0)
    for _ in range(results):
        summary.add_result(1, 0.9, 12.0)
    return summary


def test_a_tampered_field_never_slips_through_as_a_replay_or_a_result() -> None:
    """The corpus's tampering keeps the request id where it should: a tampered record that is refused
    never shares an id with a good one except by replay, so the checker's id matching is sound."""
    keyring = KeyRing({"r": {1: b"\x03" * 32, 2: b"\x04" * 32}})
    corpus = Corpus(
        "r",
        keyring,
        served_versions=VERSIONS,
        seed=11,
        devices=10,
        max_envelope_bytes=MAX_ENVELOPE_BYTES,
        max_body_bytes=MAX_BODY_BYTES,
        max_age_ms=60_000,
    )
    records = list(corpus.stream(good=200, bad=400))
    good_ids = Counter(r.request_id for r in records if r.expect == OK)
    assert max(good_ids.values()) == 1
    for r in records:
        if r.expect not in (OK, "replayed") and r.request_id is not None:
            assert r.request_id not in good_ids, r.category
    replayed = [r for r in records if r.category == "replayed"]
    assert replayed
    assert all(r.request_id in good_ids for r in replayed)
    assert ReplayedRequest.reason == CATEGORIES["replayed"]
    now_ms = time.time() * 1000
    for r in records:  # stale ones are older than the age limit, future ones past the allowed skew
        if r.category in ("stale", "future"):
            assert abs(msgpack.unpackb(r.value, raw=False)["ts"] - now_ms) > 60_000
