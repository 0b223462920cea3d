"""Verifying audit hash chains: the audit topic read back, checked chain by chain, segment by segment.

``verify`` takes audit records at their positions (any order) and the chains' committed heads from the
offset commit metadata, and reports gaps, breaks, forks, truncated segments and altered heads
(docs/contract.md, "Verifying a chain"). The chains are linked by the edge worker
(``auditchain.AuditChain``). Pure logic: ``edgestream audit verify`` reads the topic and the heads.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, TypeAlias

from edgestream.pipeline.contract.records import CHAIN_ORIGIN, AuditRecord, audit_digest
from edgestream.pipeline.errors import ContractError
from edgestream.pipeline.serving.auditchain import ChainHead, digest


class Position(NamedTuple):
    """Where an audit record sits."""

    topic: str
    """The audit topic."""
    partition: int
    """Its partition."""
    offset: int
    """The record's offset."""

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


ProblemKind: TypeAlias = Literal["gap", "break", "fork", "truncated", "head_mismatch", "undecodable"]
"""What ``verify`` found wrong (docs/contract.md, "Verifying a chain")."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a chain, with where to look."""

    kind: ProblemKind
    """``gap``: records missing inside a segment (or at its start); ``break``: a record's digest no
    longer matches the next record's ``prev`` (it was altered or replaced); ``fork``: two different
    records with the same seq; ``truncated``: the segment ends before its committed head;
    ``head_mismatch``: the record at the committed head is not the one committed; ``undecodable``: a
    value on the audit topic that is not an audit record."""
    chain: str | None
    """The chain (None for ``undecodable``)."""
    segment: int | None
    """The segment (None for ``undecodable``)."""
    first_seq: int | None
    """First seq concerned (the first missing one for ``gap`` and ``truncated``)."""
    last_seq: int | None
    """Last seq concerned."""
    positions: tuple[Position, ...]
    """The records to look at. ``gap``: the records either side of the missing ones (one side only at
    the segment's start); ``break``: the record whose digest no longer matches, then the record whose
    ``prev`` disagrees; ``fork``: every variant; ``truncated``: the segment's last record;
    ``head_mismatch``: the record(s) at the head's seq; ``undecodable``: the value."""
    message: str
    """The problem in a sentence, positions included."""


@dataclass(frozen=True, slots=True)
class SegmentSummary:
    """What ``verify`` saw of one segment of one chain."""

    chain: str
    """The chain."""
    segment: int
    """The segment (the input offset it started at)."""
    records: int
    """Distinct seq numbers present."""
    first_seq: int | None
    """Lowest seq present; None when only the committed head names the segment."""
    last_seq: int | None
    """Highest seq present; None when only the committed head names the segment."""
    head: ChainHead | None
    """The committed head, when it is in this segment."""


@dataclass(slots=True)
class ChainReport:
    """The outcome of ``verify``."""

    segments: list[SegmentSummary] = field(default_factory=list)
    """Every segment seen or named by a head, by chain then segment."""
    problems: list[Problem] = field(default_factory=list)
    """Everything wrong, by chain, segment and seq."""
    records: int = 0
    """Audit records read (a position read twice counts once)."""
    legacy: int = 0
    """Records without chain fields (written before chains): counted, not checked."""
    copies: int = 0
    """Byte-identical copies of a chained record at another position: harmless, not problems."""
    expired: bool = False
    """Whether retention may have removed records: missing segment starts are then not problems."""

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.problems


@dataclass(slots=True)
class _Variant:
    """One distinct record (by digest) at one seq of a segment, and every position it sits at."""

    digest: bytes
    prev: bytes
    positions: list[Position]


_Segment: TypeAlias = dict[int, list[_Variant]]
"""seq -> the distinct records with that seq."""


def verify(
    records: Iterable[tuple[Position, AuditRecord | bytes]],
    *,
    heads: Mapping[str, ChainHead] | None = None,
    expired: bool = False,
) -> ChainReport:
    """Check every chain in ``records`` (any order) against itself and against the committed ``heads``.

    A record given as bytes (the value read from the topic) is parsed and hashed as is; an
    ``AuditRecord`` is hashed as ``to_bytes()``. Per segment, sorted by seq, it reports *gaps* (seqs
    missing between two present ones, or before the first present one), *breaks* (a ``prev`` that is
    not the digest of the record before it, reported at that earlier record, whose bytes changed), and
    *forks* (different records with one seq). A chain's *committed head* catches what the chain alone
    cannot: records deleted from its end (``truncated``) and an altered last record
    (``head_mismatch``). Read the heads *before* the records' end offsets, so every record a head
    names is in ``records``; records past a head (committed later) are fine.

    ``expired``: retention may have removed the oldest records (an audit partition's log start is past
    0); a segment whose first records are missing, or whose committed head names no record left, is
    then not reported. A deletion at the start of a segment is indistinguishable from retention there.

    The same position given twice is read once; the same bytes at two positions is a harmless copy
    (``copies``), not a problem.
    """
    report = ChainReport(expired=expired)
    seen: set[Position] = set()
    segments: dict[tuple[str, int], _Segment] = {}
    for position, item in records:
        if position in seen:
            continue
        seen.add(position)
        report.records += 1
        if isinstance(item, bytes):
            try:
                record = AuditRecord.from_bytes(item)
            except ContractError as e:
                report.problems.append(
                    Problem("undecodable", None, None, None, None, (position,), f"{position}: {e}")
                )
                continue
            record_digest = audit_digest(item)
        else:
            record, record_digest = item, digest(item)
        if record.chain is None or record.segment is None or record.seq is None or record.prev is None:
            report.legacy += 1
            continue
        variants = segments.setdefault((record.chain, record.segment), {}).setdefault(record.seq, [])
        for variant in variants:
            if variant.digest == record_digest:
                variant.positions.append(position)
                report.copies += 1
                break
        else:
            variants.append(_Variant(record_digest, record.prev, [position]))
    heads = heads or {}
    for chain, named in heads.items():
        segments.setdefault((chain, named.segment), {})
    for (chain, segment), by_seq in sorted(segments.items()):
        committed = heads.get(chain)
        head = committed if committed is not None and committed.segment == segment else None
        seqs = sorted(by_seq)
        report.segments.append(
            SegmentSummary(
                chain, segment, len(seqs), seqs[0] if seqs else None, seqs[-1] if seqs else None, head
            )
        )
        report.problems.extend(_check_segment(chain, segment, by_seq, head, expired))
    report.problems.sort(key=_problem_order)
    return report


@dataclass(slots=True)
class _SegmentCheck:
    """The checks of one segment, appending to ``problems``."""

    chain: str
    segment: int
    by_seq: _Segment
    problems: list[Problem] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"chain {self.chain} segment {self.segment}"

    def add(self, kind: ProblemKind, first: int, last: int, at: Iterable[Position], message: str) -> None:
        self.problems.append(Problem(kind, self.chain, self.segment, first, last, tuple(at), message))

    def start(self, first: int, expired: bool) -> None:
        """The segment starts at seq 1 with ``prev`` zeros (unless retention may have taken its start)."""
        if first > 1 and not expired:
            at = _where(self.by_seq[first])
            self.add("gap", 1, first - 1, at, f"{self.missing(1, first - 1)}, before audit position {at[0]}")
        if first != 1:
            return
        for v in self.by_seq[1]:
            if v.prev != CHAIN_ORIGIN:
                self.add(
                    "break",
                    1,
                    1,
                    v.positions[:1],
                    f"record 1 of {self.name} at {v.positions[0]} does not start a segment: its prev is "
                    "not zeros (it was altered or replaced)",
                )

    def forks(self, seqs: list[int]) -> None:
        """One record per seq: different records with one seq are a fork."""
        for seq in seqs:
            if len(self.by_seq[seq]) > 1:
                at = _where(self.by_seq[seq])
                self.add(
                    "fork",
                    seq,
                    seq,
                    at,
                    f"record {seq} of {self.name} exists in {len(at)} different versions, at {_list(at)}",
                )

    def links(self, seqs: list[int]) -> None:
        """Consecutive seqs, each ``prev`` the digest of the record before."""
        for earlier, later in itertools.pairwise(seqs):
            before = _where(self.by_seq[earlier])
            if later > earlier + 1:
                after = _where(self.by_seq[later])[0]
                self.add(
                    "gap",
                    earlier + 1,
                    later - 1,
                    (before[0], after),
                    f"{self.missing(earlier + 1, later - 1)}, between audit positions {before[0]} and "
                    f"{after}",
                )
                continue
            digests = {v.digest for v in self.by_seq[earlier]}
            for v in self.by_seq[later]:
                if v.prev not in digests:
                    self.add(
                        "break",
                        earlier,
                        earlier,
                        (*before, v.positions[0]),
                        f"record {earlier} of {self.name} at {_list(before)} no longer matches the prev of "
                        f"record {later} at {v.positions[0]}: it was altered or replaced",
                    )

    def head(self, seqs: list[int], head: ChainHead, expired: bool) -> None:
        """The segment reaches its committed head, and the record there is the one committed."""
        if not seqs:
            if not expired:
                self.add(
                    "truncated",
                    1,
                    head.seq,
                    (),
                    f"{self.missing(1, head.seq)}: none is left, the committed head is at seq {head.seq}",
                )
            return
        last = seqs[-1]
        if last < head.seq:
            end = _where(self.by_seq[last])[0]
            self.add(
                "truncated",
                last + 1,
                head.seq,
                (end,),
                f"{self.missing(last + 1, head.seq)} after audit position {end}: the committed head is at "
                f"seq {head.seq}",
            )
        elif head.seq in self.by_seq and head.digest not in {v.digest for v in self.by_seq[head.seq]}:
            at = _where(self.by_seq[head.seq])
            self.add(
                "head_mismatch",
                head.seq,
                head.seq,
                at,
                f"record {head.seq} of {self.name} at {_list(at)} is not the one committed as the chain "
                "head: it was altered or replaced",
            )

    def missing(self, first: int, last: int) -> str:
        if first == last:
            return f"record {first} of {self.name} is missing"
        return f"records {first}..{last} of {self.name} are missing"


def _check_segment(
    chain: str, segment: int, by_seq: _Segment, head: ChainHead | None, expired: bool
) -> list[Problem]:
    check = _SegmentCheck(chain, segment, by_seq)
    seqs = sorted(by_seq)
    if seqs:
        check.start(seqs[0], expired)
        check.forks(seqs)
        check.links(seqs)
    if head is not None:
        check.head(seqs, head, expired)
    return check.problems


def _where(variants: list[_Variant]) -> tuple[Position, ...]:
    """The first position of each variant, in audit order."""
    return tuple(sorted(v.positions[0] for v in variants))


def _list(positions: Iterable[Position]) -> str:
    return ", ".join(map(str, positions))


def _problem_order(p: Problem) -> tuple[str, int, int, str]:
    return (p.chain or "", -1 if p.segment is None else p.segment, p.first_seq or 0, p.kind)
