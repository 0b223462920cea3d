"""Result and audit records: what the edge sends back to backends for every request it disposes of.

Both are plain msgpack maps carrying ``v`` (the contract version); parsing ignores unknown keys. An audit
record may be linked into a hash chain (``chain``, ``seg``, ``seq``, ``prev``: see
``pipeline/serving/auditchain.py``); its bytes are deterministic, so its digest is. ``docs/contract.md``
specifies both records; this module is the reference implementation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias, cast

from edgestream.pipeline.contract.envelope import CONTRACT_VERSION, REQUEST_ID_BYTES, unpack_contract_map
from edgestream.pipeline.contract.packing import packb
from edgestream.pipeline.contract.typed import TypedResult
from edgestream.pipeline.errors import UndecodableRecord

Outcome: TypeAlias = Literal["ok", "dead_letter"]
"""How the edge disposed of a request."""

DIGEST_BYTES: Final = 32
"""An audit chain digest (SHA-256) and a record's ``prev``."""
CHAIN_ORIGIN: Final = bytes(DIGEST_BYTES)
"""``prev`` of the first record of a chain segment."""

_CHAIN_KEYS: Final = ("chain", "seg", "seq", "prev")
"""Audit record keys of the hash chain, in wire order; present together or not at all."""
_MAX_INT64: Final = 2**63 - 1


@dataclass(slots=True)
class ResultRecord:
    """What the edge answers on ``edge.<region>.results`` (Kafka key: device id)."""

    request_id: bytes
    """The envelope's request id (16 bytes)."""
    device_id: str
    """The envelope's device id."""
    model: str
    """Model that answered."""
    model_version: int
    """Version that answered (the pinned one when the envelope pinned one)."""
    label: int
    """Predicted class index."""
    scores: tuple[float, ...]
    """Per-class scores (probabilities), indexed by label."""
    queue_ms: float
    """Arrival at the worker -> batch start."""
    infer_ms: float
    """Model run time of the batch this request was in."""
    total_ms: float
    """Capture on the device -> result produced (spans two clocks)."""
    batch_size: int
    """Requests in that batch."""
    node: str
    """Edge worker that answered."""
    region: str
    """Region of that worker."""
    produced_at_ms: int
    """When the record was produced, unix ms."""
    typed: TypedResult | None = None
    """What a model served by its declared signature adds (``kind``, ``cls``, ``thr``, ``out``); None
    for a zoo model, whose record carries none of those keys."""

    def to_bytes(self) -> bytes:
        """msgpack map with the keys of docs/contract.md, "Result record"."""
        fields: dict[str, object] = {
            "v": CONTRACT_VERSION,
            "rid": self.request_id,
            "dev": self.device_id,
            "model": self.model,
            "mver": self.model_version,
            "label": self.label,
            "scores": self.scores,  # a tuple packs as the same msgpack array, without a copy
            "q_ms": float(self.queue_ms),
            "i_ms": float(self.infer_ms),
            "t_ms": float(self.total_ms),
            "bs": self.batch_size,
            "node": self.node,
            "region": self.region,
            "at_ms": self.produced_at_ms,
        }
        if self.typed is not None:
            fields.update(self.typed.wire())
        return packb(fields)

    @classmethod
    def from_bytes(cls, raw: bytes) -> ResultRecord:
        """Parse a result record; unknown keys are ignored. Raises UndecodableRecord or
        UnsupportedVersion."""
        fields = unpack_contract_map(raw, UndecodableRecord)
        try:
            scores = fields.get("scores")
            if type(scores) is not list:
                raise TypeError("'scores' must be an array")
            return cls(
                request_id=_request_id(fields),
                device_id=_str(fields, "dev"),
                model=_str(fields, "model"),
                model_version=_int(fields, "mver"),
                label=_int(fields, "label"),
                scores=tuple(_number(s, "scores") for s in scores),
                queue_ms=_float(fields, "q_ms"),
                infer_ms=_float(fields, "i_ms"),
                total_ms=_float(fields, "t_ms"),
                batch_size=_int(fields, "bs"),
                node=_str(fields, "node"),
                region=_str(fields, "region"),
                produced_at_ms=_int(fields, "at_ms"),
                typed=TypedResult.from_fields(fields),
            )
        except TypeError as e:
            raise UndecodableRecord(f"not a result record: {e}") from e


@dataclass(slots=True)
class AuditRecord:
    """One per request the edge disposed of, on ``edge.<region>.audit``. Carries no payload or scores."""

    timestamp_ms: int
    """When the edge disposed of the request, unix ms."""
    request_id: bytes | None
    """The envelope's request id; None when the record was too broken to have one."""
    node: str
    """Edge worker."""
    region: str
    """Region of that worker."""
    device_id: str | None
    """The envelope's device id; None when unknown."""
    model: str | None
    """Model that answered or was asked for; None when unknown."""
    model_version: int | None
    """Version that answered (or was pinned); None when none applies."""
    outcome: Outcome
    """``ok``: a result was produced; ``dead_letter``: the record went to the DLQ."""
    reason: str | None
    """The error's ``reason`` code for a dead letter; None when ok."""
    latency_ms: float
    """Capture -> disposal (ok) or arrival -> disposal (dead letter without a capture time)."""
    chain: str | None = None
    """Hash chain this record is linked into: ``<input topic>/<input partition>``; None when unlinked
    (a record written before chains, or not yet passed through ``AuditChain.link``)."""
    segment: int | None = None
    """The chain segment: the input offset its owner started it at (docs/contract.md, "Audit chain")."""
    seq: int | None = None
    """Position in the segment, 1-based and contiguous."""
    prev: bytes | None = None
    """``audit_digest`` of the segment's previous record; ``CHAIN_ORIGIN`` (32 zero bytes) for seq 1."""

    def to_bytes(self) -> bytes:
        """msgpack map with the keys of docs/contract.md, "Audit record", in its order; None fields are
        omitted. Deterministic: equal records give equal bytes (the chain digests depend on it)."""
        fields: dict[str, object] = {"v": CONTRACT_VERSION, "at_ms": self.timestamp_ms}
        if self.request_id is not None:
            fields["rid"] = self.request_id
        fields["node"] = self.node
        fields["region"] = self.region
        if self.device_id is not None:
            fields["dev"] = self.device_id
        if self.model is not None:
            fields["model"] = self.model
        if self.model_version is not None:
            fields["mver"] = self.model_version
        fields["outcome"] = self.outcome
        if self.reason is not None:
            fields["reason"] = self.reason
        fields["lat_ms"] = float(self.latency_ms)
        if self.chain is not None:
            fields["chain"] = self.chain
        if self.segment is not None:
            fields["seg"] = self.segment
        if self.seq is not None:
            fields["seq"] = self.seq
        if self.prev is not None:
            fields["prev"] = self.prev
        return packb(fields)

    @classmethod
    def from_bytes(cls, raw: bytes) -> AuditRecord:
        """Parse an audit record; unknown keys are ignored. Raises UndecodableRecord or
        UnsupportedVersion."""
        fields = unpack_contract_map(raw, UndecodableRecord)
        try:
            outcome = _str(fields, "outcome")
            if outcome not in ("ok", "dead_letter"):
                raise TypeError(f"'outcome' must be ok or dead_letter, not {outcome!r}")
            chain, segment, seq, prev = _chain_fields(fields)
            return cls(
                timestamp_ms=_int(fields, "at_ms"),
                request_id=None if fields.get("rid") is None else _request_id(fields),
                node=_str(fields, "node"),
                region=_str(fields, "region"),
                device_id=_optional_str(fields, "dev"),
                model=_optional_str(fields, "model"),
                model_version=_optional_int(fields, "mver"),
                outcome=cast("Outcome", outcome),
                reason=_optional_str(fields, "reason"),
                latency_ms=_float(fields, "lat_ms"),
                chain=chain,
                segment=segment,
                seq=seq,
                prev=prev,
            )
        except TypeError as e:
            raise UndecodableRecord(f"not an audit record: {e}") from e


def audit_digest(raw: bytes) -> bytes:
    """SHA-256 of an audit record's wire bytes: what the next record's ``prev`` holds."""
    return hashlib.sha256(raw).digest()


def _chain_fields(fields: dict[str, object]) -> tuple[str | None, int | None, int | None, bytes | None]:
    """(chain, seg, seq, prev) of an audit record: all four or none, each checked (TypeError otherwise)."""
    present = [key for key in _CHAIN_KEYS if fields.get(key) is not None]
    if not present:
        return None, None, None, None
    if len(present) != len(_CHAIN_KEYS):
        missing = sorted(set(_CHAIN_KEYS) - set(present))
        raise TypeError(f"chain keys come together: {missing} missing beside {present}")
    chain = _str(fields, "chain")
    segment = _int(fields, "seg")
    seq = _int(fields, "seq")
    prev = fields["prev"]
    if not chain:
        raise TypeError("'chain' must not be empty")
    if not 0 <= segment <= _MAX_INT64:
        raise TypeError("'seg' must be a non-negative int64")
    if not 1 <= seq <= _MAX_INT64:
        raise TypeError("'seq' must be a positive int64")
    if type(prev) is not bytes or len(prev) != DIGEST_BYTES:
        raise TypeError(f"'prev' must be bin of {DIGEST_BYTES} bytes")
    return chain, segment, seq, prev


def _str(fields: dict[str, object], key: str) -> str:
    value = fields.get(key)
    if type(value) is not str:
        raise TypeError(f"{key!r} must be a str")
    return value


def _int(fields: dict[str, object], key: str) -> int:
    value = fields.get(key)
    if type(value) is not int:
        raise TypeError(f"{key!r} must be an integer")
    return value


def _float(fields: dict[str, object], key: str) -> float:
    return _number(fields.get(key), key)


def _number(value: object, key: str) -> float:
    if type(value) is not float and type(value) is not int:
        raise TypeError(f"{key!r} must be a number")
    return float(value)


def _request_id(fields: dict[str, object]) -> bytes:
    value = fields.get("rid")
    if type(value) is not bytes or len(value) != REQUEST_ID_BYTES:
        raise TypeError(f"'rid' must be bin of {REQUEST_ID_BYTES} bytes")
    return value


def _optional_str(fields: dict[str, object], key: str) -> str | None:
    return None if fields.get(key) is None else _str(fields, key)


def _optional_int(fields: dict[str, object], key: str) -> int | None:
    return None if fields.get(key) is None else _int(fields, key)
