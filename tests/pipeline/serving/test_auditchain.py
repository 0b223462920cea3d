"""Audit hash chains, the linking side: staged heads, the offset-metadata head, the next owner."""

from __future__ import annotations

import dataclasses
import itertools
import re

import pytest

from edgestream.pipeline.contract.records import CHAIN_ORIGIN, AuditRecord, audit_digest
from edgestream.pipeline.serving.auditchain import (
    AuditChain,
    ChainHead,
    ChainNotStarted,
    MalformedChainHead,
    digest,
)
from edgestream.pipeline.serving.auditverify import verify
from tests.pipeline.serving.chains import EMBEDDINGS, FRAMES, audit, linked, place

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


def test_link_encoded_gives_the_bytes_digested_and_leaves_the_chain_alone_when_encoding_fails() -> None:
    chains = AuditChain()
    chains.start(FRAMES, None, offset=0)
    first, raw = chains.link_encoded(FRAMES, audit(0))
    assert raw == first.to_bytes()
    head = chains.staged_head(FRAMES)
    assert head is not None
    assert head.digest == audit_digest(raw)
    unencodable = dataclasses.replace(audit(1), timestamp_ms=2**64)  # msgpack has no such integer
    with pytest.raises(OverflowError):
        chains.link_encoded(FRAMES, unencodable)
    assert chains.staged_head(FRAMES) == head
    assert unencodable == dataclasses.replace(audit(1), timestamp_ms=2**64)  # left unlinked, as it was
    second, _ = chains.link_encoded(FRAMES, audit(1))
    assert (second.seq, second.prev) == (2, audit_digest(raw))


def test_link_fills_in_the_record_it_is_given() -> None:
    """No copy: the record handed in is the linked one, its own fields untouched."""
    chains = AuditChain()
    chains.start(FRAMES, None, offset=7)
    record = audit(0)
    linked, raw = chains.link_encoded(FRAMES, record)
    assert linked is record
    assert (record.chain, record.segment, record.seq, record.prev) == (FRAMES, 7, 1, CHAIN_ORIGIN)
    assert dataclasses.replace(record, chain=None, segment=None, seq=None, prev=None) == audit(0)
    assert AuditRecord.from_bytes(raw) == record


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
