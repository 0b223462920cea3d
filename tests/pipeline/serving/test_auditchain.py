"""Audit hash chains: linking with staged heads, the offset-metadata head, and what verify catches."""

from __future__ import annotations

import dataclasses
import itertools
import random
import re
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgestream.pipeline.contract.records import CHAIN_ORIGIN, AuditRecord, audit_digest
from edgestream.pipeline.serving.auditchain import (
    AuditChain,
    ChainHead,
    ChainNotStarted,
    ChainReport,
    MalformedChainHead,
    Position,
    Problem,
    chain_id,
    digest,
    verify,
)

T0_MS = 1_750_000_000_000
AUDIT = "edge.eu-west.audit"
FRAMES = chain_id("edge.eu-west.ingest.frame", 2)
EMBEDDINGS = chain_id("edge.eu-west.ingest.embedding", 0)

Entry = tuple[Position, bytes]


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


def only(report: ChainReport) -> Problem:
    assert len(report.problems) == 1, report.problems
    return report.problems[0]


# --- linking -------------------------------------------------------------------------------------


def test_link_fills_contiguous_seq_and_prev_digests() -> None:
    chains = AuditChain()
    chains.start(FRAMES, None, offset=0)
    records = [chains.link(FRAMES, audit(i)) for i in range(10)]
    assert [r.seq for r in records] == list(range(1, 11))
    assert {(r.chain, r.segment) for r in records} == {(FRAMES, 0)}
    assert records[0].prev == CHAIN_ORIGIN == bytes(32)
    for earlier, later in itertools.pairwise(records):
        assert later.prev == digest(earlier) == audit_digest(earlier.to_bytes())
    # The record is the input with the chain fields filled in, nothing else changed.
    assert dataclasses.replace(records[3], chain=None, segment=None, seq=None, prev=None) == audit(3)


def test_link_copies_every_field_of_the_record() -> None:
    """``link`` copies the fields one by one (faster than ``dataclasses.replace``): a new field of
    ``AuditRecord`` must be added there, then here."""
    assert [f.name for f in dataclasses.fields(AuditRecord)] == [
        "timestamp_ms", "request_id", "node", "region", "device_id", "model", "model_version",
        "outcome", "reason", "latency_ms", "chain", "segment", "seq", "prev",
    ]  # fmt: skip


def test_staged_head_commit_and_head() -> None:
    chains = AuditChain()
    chains.start(FRAMES, None, offset=0)
    assert chains.staged_head(FRAMES) is None
    assert chains.metadata(FRAMES) == ""
    first = chains.link(FRAMES, audit(0))
    second = chains.link(FRAMES, audit(1))
    staged = ChainHead(2, digest(second), 0)
    assert chains.staged_head(FRAMES) == staged
    assert chains.metadata(FRAMES) == staged.to_metadata()
    assert chains.head(FRAMES) is None  # nothing committed yet
    assert chains.commit(FRAMES) == staged
    assert chains.head(FRAMES) == staged == chains.staged_head(FRAMES)
    assert chains.commit(FRAMES) == staged  # nothing staged: still the committed head
    assert first.seq == 1


def test_abort_then_relink_gives_identical_records() -> None:
    chains = AuditChain()
    chains.start(FRAMES, None, offset=40)
    linked(chains, FRAMES, 3)
    committed = chains.head(FRAMES)
    first_try = [chains.link(FRAMES, audit(i)) for i in range(3, 7)]
    chains.abort(FRAMES)
    assert chains.staged_head(FRAMES) == committed
    second_try = [chains.link(FRAMES, audit(i)) for i in range(3, 7)]
    assert second_try == first_try
    assert [r.to_bytes() for r in second_try] == [r.to_bytes() for r in first_try]
    assert [r.seq for r in second_try] == [4, 5, 6, 7]


def test_chains_are_independent() -> None:
    chains = AuditChain()
    chains.start(FRAMES, None, offset=0)
    chains.start(EMBEDDINGS, None, offset=0)
    chains.link(FRAMES, audit(0))
    embedding = chains.link(EMBEDDINGS, audit(1))
    chains.abort(FRAMES)
    assert chains.staged_head(FRAMES) is None
    assert chains.commit(EMBEDDINGS) == ChainHead(1, digest(embedding), 0)


def test_next_owner_continues_from_the_committed_metadata() -> None:
    first_owner = AuditChain()
    first_owner.start(FRAMES, None, offset=0)
    records = linked(first_owner, FRAMES, 6)
    metadata = first_owner.metadata(FRAMES)
    first_owner.forget(FRAMES)
    assert FRAMES not in first_owner

    second_owner = AuditChain()
    second_owner.start(FRAMES, ChainHead.from_metadata(metadata), offset=6)
    records += linked(second_owner, FRAMES, 4, first=6)
    assert [r.seq for r in records] == list(range(1, 11))
    assert {r.segment for r in records} == {0}
    heads = {FRAMES: second_owner.head(FRAMES)}
    report = verify(place(records), heads={k: v for k, v in heads.items() if v is not None})
    assert report.ok, report.problems


def test_a_chain_without_head_starts_a_segment_at_the_input_offset() -> None:
    chains = AuditChain()
    chains.start(FRAMES, None, offset=1234)
    record = chains.link(FRAMES, audit(0))
    assert (record.segment, record.seq, record.prev) == (1234, 1, CHAIN_ORIGIN)


def test_start_refuses_a_head_whose_segment_starts_later() -> None:
    with pytest.raises(MalformedChainHead, match="after 10"):
        AuditChain().start(FRAMES, ChainHead(3, bytes(32), 11), offset=10)
    with pytest.raises(ValueError, match="offset"):
        AuditChain().start(FRAMES, None, offset=-1)


def test_link_refuses_unstarted_chains_and_linked_records() -> None:
    chains = AuditChain()
    with pytest.raises(ChainNotStarted):
        chains.link(FRAMES, audit(0))
    with pytest.raises(ChainNotStarted):
        chains.staged_head(FRAMES)
    chains.start(FRAMES, None, offset=0)
    record = chains.link(FRAMES, audit(0))
    with pytest.raises(ValueError, match="already linked"):
        chains.link(FRAMES, record)
    chains.forget(FRAMES)
    with pytest.raises(ChainNotStarted):
        chains.link(FRAMES, audit(1))
    chains.abort(FRAMES)  # a forgotten chain's late abort is harmless
    assert ChainNotStarted(FRAMES).reason == "chain_not_started"


# --- the head in offset metadata -----------------------------------------------------------------


def test_head_metadata_round_trip() -> None:
    head = ChainHead(seq=9_000_000_001, digest=bytes(range(32)), segment=77)
    text = head.to_metadata()
    assert text == f"ac1:77:9000000001:{bytes(range(32)).hex()}"
    assert text.isascii()
    assert ChainHead.from_metadata(text) == head
    biggest = ChainHead(2**63 - 1, b"\xff" * 32, 2**63 - 1).to_metadata()
    assert len(biggest) == 108
    assert ChainHead.from_metadata(biggest) == ChainHead(2**63 - 1, b"\xff" * 32, 2**63 - 1)


@pytest.mark.parametrize(
    "text", [None, "", "checkpoint=5", '{"v": 1}', "acme:1:2", "AC1:0:1:" + "00" * 32, " ac1:0:1"]
)
def test_no_head_or_someone_elses_metadata_is_none(text: str | None) -> None:
    assert ChainHead.from_metadata(text) is None


HEX = "ab" * 32


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("ac1:", "expected ac1:"),
        ("ac1:0:1", "expected ac1:"),
        (f"ac1:0:0:{HEX}", "expected ac1:"),  # seq starts at 1
        (f"ac1:-1:1:{HEX}", "expected ac1:"),
        (f"ac1:01:1:{HEX}", "expected ac1:"),
        (f"ac1:0:1:{HEX.upper()}", "expected ac1:"),
        (f"ac1:0:1:{HEX[:-2]}", "expected ac1:"),
        (f"ac1:0:1:{HEX} ", "expected ac1:"),
        (f"ac1:0:{2**63}:{HEX}", "positive int64"),
        (f"ac2:0:1:{HEX}", "version 2"),
    ],
)
def test_garbled_heads_of_ours_raise(text: str, why: str) -> None:
    with pytest.raises(MalformedChainHead, match=re.escape(why)) as info:
        ChainHead.from_metadata(text)
    assert info.value.reason == "bad_chain_head"
    assert info.value.text == text


def test_chain_head_checks_its_fields() -> None:
    with pytest.raises(ValueError, match="seq"):
        ChainHead(0, bytes(32), 0)
    with pytest.raises(ValueError, match="segment"):
        ChainHead(1, bytes(32), -1)
    with pytest.raises(ValueError, match="digest"):
        ChainHead(1, bytes(31), 0)


# --- verify --------------------------------------------------------------------------------------


def test_a_clean_chain_verifies() -> None:
    records, head = new_chain(20)
    report = verify(place(records), heads={FRAMES: head})
    assert report.ok
    assert report.records == 20
    assert (report.legacy, report.copies) == (0, 0)
    (summary,) = report.segments
    assert (summary.chain, summary.segment, summary.records) == (FRAMES, 0, 20)
    assert (summary.first_seq, summary.last_seq, summary.head) == (1, 20, head)


def test_records_may_be_given_parsed() -> None:
    records, head = new_chain(5)
    parsed = [(position, AuditRecord.from_bytes(raw)) for position, raw in place(records)]
    assert verify(parsed, heads={FRAMES: head}).ok


def test_a_deleted_record_is_a_gap_between_its_neighbours() -> None:
    records, head = new_chain(20)
    entries = place(records)
    del entries[11]  # seq 12
    problem = only(verify(entries, heads={FRAMES: head}))
    assert problem.kind == "gap"
    assert (problem.chain, problem.segment, problem.first_seq, problem.last_seq) == (FRAMES, 0, 12, 12)
    assert problem.positions == (entries[10][0], entries[11][0])
    assert str(entries[10][0]) in problem.message
    assert str(entries[11][0]) in problem.message
    assert f"record 12 of chain {FRAMES} segment 0 is missing" in problem.message


def test_several_deleted_records_are_one_gap() -> None:
    records, _ = new_chain(20)
    entries = place(records)
    del entries[4:8]  # seq 5..8
    problem = only(verify(entries))
    assert (problem.kind, problem.first_seq, problem.last_seq) == ("gap", 5, 8)
    assert "records 5..8" in problem.message


@pytest.mark.parametrize(
    "change", [{"latency_ms": 99.0}, {"outcome": "dead_letter", "reason": "stale"}, {"request_id": None}]
)
def test_an_altered_record_breaks_the_chain_at_its_position(change: dict[str, object]) -> None:
    records, head = new_chain(20)
    entries = place(records)
    position, _ = entries[6]  # seq 7
    entries[6] = (position, dataclasses.replace(records[6], **change).to_bytes())  # type: ignore[arg-type]
    problem = only(verify(entries, heads={FRAMES: head}))
    assert (problem.kind, problem.first_seq, problem.last_seq) == ("break", 7, 7)
    assert problem.positions == (position, entries[7][0])
    assert problem.message.startswith(f"record 7 of chain {FRAMES} segment 0 at {position} no longer")


def test_a_replaced_record_breaks_the_chain_too() -> None:
    records, _ = new_chain(10)
    entries = place(records)
    position, _ = entries[3]
    other = AuditChain()
    other.start(FRAMES, None, offset=0)
    forged = [other.link(FRAMES, audit(100 + i)) for i in range(4)][3]  # a seq 4 of another history
    entries[3] = (position, forged.to_bytes())
    problems = verify(entries).problems
    assert [(p.kind, p.first_seq) for p in problems] == [("break", 3), ("break", 4)]
    assert problems[1].positions[0] == position


def test_order_and_audit_partitions_do_not_matter() -> None:
    records, head = new_chain(30)
    reports = []
    for seed in range(4):
        entries = place(records, partitions=1 + seed, seed=seed)
        random.Random(seed).shuffle(entries)
        reports.append(verify(entries, heads={FRAMES: head}))
    assert all(r.ok for r in reports)
    assert len({tuple(r.segments) for r in reports}) == 1


def test_a_new_segment_is_not_a_gap() -> None:
    # Chains began with an upgrade at input offset 500; later a head was lost and a new owner started
    # a second segment at 900.
    first, _ = new_chain(8, offset=500)
    second, head = new_chain(5, offset=900)
    legacy = [dataclasses.replace(audit(1000 + i)) for i in range(3)]
    report = verify(place([*legacy, *first, *second]), heads={FRAMES: head})
    assert report.ok, report.problems
    assert report.legacy == 3
    assert [(s.segment, s.records, s.first_seq, s.last_seq) for s in report.segments] == [
        (500, 8, 1, 8),
        (900, 5, 1, 5),
    ]
    assert report.segments[1].head == head
    assert report.segments[0].head is None


def test_a_missing_segment_start_is_a_gap_unless_retention_may_have_run() -> None:
    records, head = new_chain(10)
    entries = place(records)[3:]
    problem = only(verify(entries, heads={FRAMES: head}))
    assert (problem.kind, problem.first_seq, problem.last_seq) == ("gap", 1, 3)
    assert problem.positions == (entries[0][0],)
    assert verify(entries, heads={FRAMES: head}, expired=True).ok


def test_a_tail_deletion_is_caught_only_against_the_committed_head() -> None:
    records, head = new_chain(12)
    entries = place(records)[:-2]  # seq 11 and 12 gone
    assert verify(entries).ok  # the limit: nothing in the chain itself says it went further
    problem = only(verify(entries, heads={FRAMES: head}))
    assert (problem.kind, problem.first_seq, problem.last_seq) == ("truncated", 11, 12)
    assert problem.positions == (entries[-1][0],)
    assert f"after audit position {entries[-1][0]}" in problem.message


def test_a_chain_deleted_entirely_is_caught_against_its_head() -> None:
    _, head = new_chain(4)
    problem = only(verify([], heads={FRAMES: head}))
    assert (problem.kind, problem.first_seq, problem.last_seq, problem.positions) == ("truncated", 1, 4, ())
    assert verify([], heads={FRAMES: head}, expired=True).ok


def test_an_altered_last_record_is_caught_against_the_committed_head() -> None:
    records, head = new_chain(6)
    entries = place(records)
    position, _ = entries[-1]
    entries[-1] = (position, dataclasses.replace(records[-1], latency_ms=0.0).to_bytes())
    assert verify(entries).ok
    problem = only(verify(entries, heads={FRAMES: head}))
    assert (problem.kind, problem.first_seq, problem.positions) == ("head_mismatch", 6, (position,))


def test_records_committed_after_the_head_was_read_are_fine() -> None:
    chains = AuditChain()
    chains.start(FRAMES, None, offset=0)
    records = linked(chains, FRAMES, 5)
    head = chains.head(FRAMES)
    assert head is not None
    records += linked(chains, FRAMES, 5, first=5)
    assert verify(place(records), heads={FRAMES: head}).ok


def test_a_head_of_another_segment_checks_only_its_own() -> None:
    records, _ = new_chain(5, offset=0)
    _, later_head = new_chain(3, offset=70)  # the segment at 70 lost all its records
    problem = only(verify(place(records), heads={FRAMES: later_head}))
    assert (problem.kind, problem.segment, problem.first_seq, problem.last_seq) == ("truncated", 70, 1, 3)


def test_two_different_records_with_one_seq_are_a_fork() -> None:
    records, _ = new_chain(6)
    entries = place(records)
    twin = dataclasses.replace(records[2], timestamp_ms=1).to_bytes()
    entries.append((Position(AUDIT, 7, 0), twin))
    report = verify(entries)
    assert [(p.kind, p.first_seq) for p in report.problems] == [("fork", 3)]
    assert set(report.problems[0].positions) == {entries[2][0], Position(AUDIT, 7, 0)}


def test_a_copy_at_another_position_is_harmless_and_a_reread_counts_once() -> None:
    records, head = new_chain(6)
    entries = place(records)
    entries.append((Position(AUDIT, 9, 0), entries[2][1]))  # copied, byte for byte
    entries.append(entries[4])  # the same position read twice
    report = verify(entries, heads={FRAMES: head})
    assert report.ok
    assert (report.records, report.copies) == (7, 1)


def test_legacy_and_undecodable_values() -> None:
    records, head = new_chain(3)
    entries = place(records)
    entries.append((Position(AUDIT, 0, 100), audit(50).to_bytes()))
    entries.append((Position(AUDIT, 0, 101), b"\xc1 not msgpack"))
    report = verify(entries, heads={FRAMES: head})
    assert report.legacy == 1
    problem = only(report)
    assert (problem.kind, problem.chain, problem.positions) == (
        "undecodable",
        None,
        (Position(AUDIT, 0, 101),),
    )
    assert problem.message.startswith(f"{AUDIT}[0]@101: ")


def test_a_first_record_must_start_from_zeros() -> None:
    records, _ = new_chain(3)
    entries = place(records)
    entries[0] = (entries[0][0], dataclasses.replace(records[0], prev=b"\x01" * 32).to_bytes())
    kinds = [(p.kind, p.first_seq, p.positions[0]) for p in verify(entries).problems]
    assert kinds == [("break", 1, entries[0][0]), ("break", 1, entries[0][0])]


def test_problems_come_sorted_by_chain_segment_and_seq() -> None:
    frames, frames_head = new_chain(10)
    embeddings, embeddings_head = new_chain(10, chain=EMBEDDINGS)
    entries = place([*frames, *embeddings])
    doomed = {entries[13][0], entries[5][0], entries[2][0]}  # embeddings 4, frames 6 and 3
    report = verify(
        [e for e in entries if e[0] not in doomed], heads={FRAMES: frames_head, EMBEDDINGS: embeddings_head}
    )
    assert [(p.chain, p.first_seq) for p in report.problems] == [(EMBEDDINGS, 4), (FRAMES, 3), (FRAMES, 6)]


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_one_deletion_or_alteration_is_exactly_one_problem_at_its_place(data: st.DataObject) -> None:
    names = [chain_id(f"edge.eu-west.ingest.{k}", p) for k in ("frame", "embedding") for p in range(2)]
    chains = AuditChain()
    by_chain: dict[str, list[AuditRecord]] = {}  # committed, in seq order
    open_txn: dict[str, list[AuditRecord]] = {}
    produced: list[AuditRecord] = []  # committed, in commit order
    for name in data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True)):
        chains.start(name, None, offset=data.draw(st.integers(0, 10**6)))
        by_chain[name], open_txn[name] = [], []
    for i in range(data.draw(st.integers(1, 60))):
        name = data.draw(st.sampled_from(sorted(by_chain)))
        open_txn[name].append(chains.link(name, audit(i)))
        end_txn = data.draw(st.sampled_from(["commit", "abort", "go on", "go on"]))
        if end_txn == "commit":
            chains.commit(name)
            by_chain[name] += open_txn[name]
            produced += open_txn[name]
            open_txn[name] = []
        elif end_txn == "abort":  # a reader never sees aborted records
            chains.abort(name)
            open_txn[name] = []
    heads: dict[str, ChainHead] = {}
    for name in sorted(by_chain):
        by_chain[name] += open_txn[name]
        produced += open_txn[name]
        head = chains.commit(name)
        if head is None:
            del by_chain[name]
        else:
            heads[name] = head
            assert [r.seq for r in by_chain[name]] == list(range(1, len(by_chain[name]) + 1))
    if not by_chain:
        return
    entries = place(produced, partitions=data.draw(st.integers(1, 4)), seed=data.draw(st.integers(0, 99)))
    where = {r.to_bytes(): e[0] for r, e in zip(produced, entries, strict=True)}
    victim_chain = data.draw(st.sampled_from(sorted(by_chain)))
    chain_records = by_chain[victim_chain]
    n = len(chain_records)
    k = data.draw(st.integers(1, n))
    victim = chain_records[k - 1]
    position = where[victim.to_bytes()]

    def at(seq: int) -> Position:
        return where[chain_records[seq - 1].to_bytes()]

    expected: tuple[str, int, int, tuple[Position, ...]]
    if data.draw(st.booleans()):
        entries = [e for e in entries if e[0] != position]
        if n == 1:
            expected = ("truncated", 1, 1, ())
        elif k == 1:
            expected = ("gap", 1, 1, (at(2),))
        elif k == n:
            expected = ("truncated", n, n, (at(n - 1),))
        else:
            expected = ("gap", k, k, (at(k - 1), at(k + 1)))
    else:
        altered = dataclasses.replace(victim, timestamp_ms=victim.timestamp_ms + 1).to_bytes()
        entries = [(p, altered if p == position else raw) for p, raw in entries]
        expected = ("break", k, k, (position, at(k + 1))) if k < n else ("head_mismatch", n, n, (position,))
    entries = data.draw(st.permutations(entries))
    problem = only(verify(entries, heads=heads))
    assert (problem.kind, problem.first_seq, problem.last_seq, problem.positions) == expected
    assert (problem.chain, problem.segment) == (victim_chain, victim.segment)
