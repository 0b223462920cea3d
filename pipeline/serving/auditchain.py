"""Tamper-evident hash chains over audit records: one chain per input partition, linked by the edge
worker inside that partition's transaction, verified by reading the audit topic back.

A chain's id is ``<input topic>/<input partition>``. Each linked record carries ``chain``, ``seg``,
``seq`` and ``prev``: its segment, its 1-based place in it, and the SHA-256 of the wire bytes of the
segment's previous record (32 zero bytes for seq 1). The chain's *head* (segment, last seq, last
digest) after a committed transaction travels in the Kafka offset commit metadata of the input
partition, in the same transaction, so the partition's next owner continues from it. An owner that
finds no head starts a new *segment*, identified by the input offset it starts at. docs/contract.md,
"Audit chain", specifies all of it; ``auditverify.verify`` is the reader's check and says what it can
and cannot detect.

Pure logic: no Kafka here. ``AuditChain`` is the worker's state, staged like its transactions (the
same discipline as ``ReplayGuard``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from edgestream.pipeline.contract.records import CHAIN_ORIGIN, DIGEST_BYTES, AuditRecord, audit_digest
from edgestream.pipeline.errors import EdgestreamError

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


# --- the worker's state, staged like its transactions --------------------------------------------


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
        """``record`` with ``chain``, ``seg``, ``seq`` and ``prev`` filled in (in place), its digest
        staged as the new head. Raises `ChainNotStarted`, and ValueError for a record that is already
        linked."""
        return self.link_encoded(chain, record)[0]

    def link_encoded(self, chain: str, record: AuditRecord) -> tuple[AuditRecord, bytes]:
        """`link`, and the linked record's wire bytes: encoded once, for its digest and to be sent.
        ``record`` itself is filled in, not copied (a copy per audit record was 2.5% of a draining
        worker's CPU). One that does not encode leaves the chain, and ``record``, as they were."""
        state = self._chains.get(chain)
        if state is None:
            raise ChainNotStarted(chain)
        if record.chain is not None:
            raise ValueError(f"audit record is already linked into {record.chain!r} seq {record.seq}")
        tip = state.committed if state.staged is None else state.staged
        seq, prev = (1, CHAIN_ORIGIN) if tip is None else (tip.seq + 1, tip.digest)
        record.chain, record.segment, record.seq, record.prev = chain, state.segment, seq, prev
        try:
            raw = record.to_bytes()
        except BaseException:
            record.chain = record.segment = record.seq = record.prev = None
            raise
        state.staged = ChainHead(seq, audit_digest(raw), state.segment)
        return record, raw

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
