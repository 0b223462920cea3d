"""Audit hash chains, the verifying side: what ``verify`` catches, and where it points."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgestream.pipeline.contract.records import AuditRecord
from edgestream.pipeline.serving.auditchain import AuditChain, ChainHead, chain_id
from edgestream.pipeline.serving.auditverify import ChainReport, Position, Problem, verify
from tests.pipeline.serving.chains import AUDIT, EMBEDDINGS, FRAMES, audit, linked, new_chain, place


def only(report: ChainReport) -> Problem:
    assert len(report.problems) == 1, report.problems
    return report.problems[0]


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
