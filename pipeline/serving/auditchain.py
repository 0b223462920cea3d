"""Tamper-evident hash chains over audit records: one chain per input partition, linked by the edge
worker inside that partition's transaction, verified by reading the audit topic back.

A chain's id is ``<input topic>/<input partition>``. Each linked record carries ``chain``, ``seg``,
``seq`` and ``prev``: its segment, its 1-based place in it, and the SHA-256 of the wire bytes of the
segment's previous record (32 zero bytes for seq 1). The chain's *head* (segment, last seq, last
digest) after a committed transaction travels in the Kafka offset commit metadata of the input
partition, in the same transaction, so the partition's next owner continues from it. An owner that
finds no head starts a new *segment*, identified by the input offset it starts at. docs/contract.md,
"Audit chain", specifies all of it; ``verify`` says what a reader can and cannot detect.

Pure logic: no Kafka here. ``AuditChain`` is the worker's state, staged like its transactions (the
same discipline as ``ReplayGuard``); ``verify`` is the reader's check.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, NamedTuple, TypeAlias

from edgestream.pipeline.contract.records import CHAIN_ORIGIN, DIGEST_BYTES, AuditRecord, audit_digest
from edgestream.pipeline.errors import ContractError, EdgestreamError

HEAD_VERSION: Final = 1
"""Version of the offset-metadata head format, the ``1`` in ``ac1:``."""
HEAD_PREFIX: Final = f"ac{HEAD_VERSION}:"
"""Every head this build writes starts so; metadata starting ``ac<digits>:`` is ours (any version)."""

_HEAD_RE: Final = re.compile(r"ac1:(0|[1-9][0-9]{0,18}):([1-9][0-9]{0,18}):([0-9a-f]{64})")
_OURS_RE: Final = re.compile(r"ac([0-9]+):")
_MAX_INT64: Final = 2**63 - 1


class MalformedChainHead(EdgestreamError):
    """Offset metadata that is ours (``ac<n>:``) but not a head this build can read."""

    reason = "bad_chain_head"

    def __init__(self, text: str, why: str) -> None:
        super().__init__(f"offset metadata {text[:120]!r} is not a valid audit chain head: {why}")
        self.text = text
        self.why = why


class ChainNotStarted(EdgestreamError):
    """``link`` on a chain that was never ``start``-ed (or was forgotten): a worker bug."""

    reason = "chain_not_started"

    def __init__(self, chain: str) -> None:
        super().__init__(f"audit chain {chain!r} was not started on this worker")
        self.chain = chain


def chain_id(topic: str, partition: int) -> str:
    """The id of the chain of one input partition: ``<topic>/<partition>``."""
    return f"{topic}/{partition}"


def digest(record: AuditRecord) -> bytes:
    """SHA-256 of ``record.to_bytes()``: what the next record's ``prev`` holds."""
    return audit_digest(record.to_bytes())


# --- the head, in offset commit metadata ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The last committed record of a chain: where the next owner continues."""

    seq: int
    """Its ``seq`` (>= 1)."""
    digest: bytes
    """Its digest (32 bytes): the next record's ``prev``."""
    segment: int
    """Its segment: the input offset the segment was started at (>= 0)."""

    def __post_init__(self) -> None:
        if not 1 <= self.seq <= _MAX_INT64:
            raise ValueError(f"seq must be a positive int64, got {self.seq}")
        if not 0 <= self.segment <= _MAX_INT64:
            raise ValueError(f"segment must be a non-negative int64, got {self.segment}")
        if len(self.digest) != DIGEST_BYTES:
            raise ValueError(f"digest must be {DIGEST_BYTES} bytes, got {len(self.digest)}")

    def to_metadata(self) -> str:
        """``ac1:<segment>:<seq>:<64 lowercase hex digits>``, at most 108 ASCII characters."""
        return f"{HEAD_PREFIX}{self.segment}:{self.seq}:{self.digest.hex()}"

    @classmethod
    def from_metadata(cls, text: str | None) -> ChainHead | None:
        """The head in offset commit metadata; None when there is none (None, empty, or anyone else's
        metadata): the owner then starts a new segment. Raises `MalformedChainHead` for metadata that
        is ours but garbled or of an unknown version: a head was committed and cannot be continued."""
        if not text:
            return None
        ours = _OURS_RE.match(text)
        if ours is None:
            return None
        if int(ours.group(1)) != HEAD_VERSION:
            raise MalformedChainHead(text, f"version {ours.group(1)} (this build reads {HEAD_VERSION})")
        match = _HEAD_RE.fullmatch(text)
        if match is None:
            raise MalformedChainHead(text, "expected ac1:<segment>:<seq>:<64 hex digits>")
        segment, seq, hex_digest = match.groups()
        try:
            return cls(int(seq), bytes.fromhex(hex_digest), int(segment))
        except ValueError as e:
            raise MalformedChainHead(text, str(e)) from e


# --- the worker side -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Chain:
    segment: int
    """The segment this worker links into."""
    committed: ChainHead | None
    """Head after the last committed transaction; None while the segment has no committed record."""
    staged: ChainHead | None = None
    """Head after the records linked in the open transaction; None when none were."""


class AuditChain:
    """The worker's chain state, per chain id (input partition), staged like its transactions.

    ``start`` when the worker is positioned on the partition at its committed offset, with the head
    from that offset's metadata; ``link`` each audit record of the partition's open transaction (in
    the order they are produced); put ``metadata`` (the staged head) in the offset commit of the same
    transaction; then ``commit`` if the transaction committed or ``abort`` if it aborted (the same
    input records are linked again, with the same seq numbers). ``forget`` on revocation.

    A transaction whose outcome is unknown (commit failed with a timeout, the producer was replaced)
    may have committed: do not ``abort`` and carry on, ``start`` again from the committed metadata
    when the partition is positioned again.
    """

    def __init__(self) -> None:
        self._chains: dict[str, _Chain] = {}

    def start(self, chain: str, head: ChainHead | None, *, offset: int) -> None:
        """Take up ``chain`` at the committed input ``offset``, continuing ``head``; with no head, a new
        segment starts there (its records carry ``seg = offset``). Replaces any state of ``chain``.

        Raises `MalformedChainHead` for a head whose segment starts after ``offset``: a segment starts
        at the offset its owner was positioned at, so committed offsets only grow past it.
        """
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        if head is not None and head.segment > offset:
            raise MalformedChainHead(
                head.to_metadata(), f"its segment starts at input offset {head.segment}, after {offset}"
            )
        segment = offset if head is None else head.segment
        self._chains[chain] = _Chain(segment, head)

    def link(self, chain: str, record: AuditRecord) -> AuditRecord:
        """``record`` with ``chain``, ``seg``, ``seq`` and ``prev`` filled in, its digest staged as the
        new head. Raises `ChainNotStarted`, and ValueError for a record that is already linked."""
        state = self._chains.get(chain)
        if state is None:
            raise ChainNotStarted(chain)
        if record.chain is not None:
            raise ValueError(f"audit record is already linked into {record.chain!r} seq {record.seq}")
        tip = state.committed if state.staged is None else state.staged
        seq, prev = (1, CHAIN_ORIGIN) if tip is None else (tip.seq + 1, tip.digest)
        linked = AuditRecord(  # not dataclasses.replace: 3x slower on the hot path
            record.timestamp_ms,
            record.request_id,
            record.node,
            record.region,
            record.device_id,
            record.model,
            record.model_version,
            record.outcome,
            record.reason,
            record.latency_ms,
            chain=chain,
            segment=state.segment,
            seq=seq,
            prev=prev,
        )
        state.staged = ChainHead(seq, digest(linked), state.segment)
        return linked

    def staged_head(self, chain: str) -> ChainHead | None:
        """The head as the open transaction leaves it (the committed one when nothing is staged); None
        while the segment has no record. Raises `ChainNotStarted`."""
        state = self._state(chain)
        return state.committed if state.staged is None else state.staged

    def metadata(self, chain: str) -> str:
        """Offset commit metadata for the open transaction: the staged head, or "" when there is none.

        Every offset commit of the partition must carry it: an empty one makes the next owner start a
        new segment."""
        head = self.staged_head(chain)
        return "" if head is None else head.to_metadata()

    def commit(self, chain: str) -> ChainHead | None:
        """The transaction committed: the staged head becomes the committed one; returns it."""
        state = self._state(chain)
        if state.staged is not None:
            state.committed, state.staged = state.staged, None
        return state.committed

    def abort(self, chain: str) -> None:
        """The transaction aborted: drop the staged links (their records are linked again)."""
        state = self._chains.get(chain)
        if state is not None:
            state.staged = None

    def forget(self, chain: str) -> None:
        """Drop ``chain`` (revoked: another worker continues it from the committed metadata)."""
        self._chains.pop(chain, None)

    def head(self, chain: str) -> ChainHead | None:
        """The committed head; None while the segment has no committed record. Raises
        `ChainNotStarted`."""
        return self._state(chain).committed

    def __contains__(self, chain: object) -> bool:
        return chain in self._chains

    def _state(self, chain: str) -> _Chain:
        state = self._chains.get(chain)
        if state is None:
            raise ChainNotStarted(chain)
        return state


# --- the reader side -----------------------------------------------------------------------------


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
