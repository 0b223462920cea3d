"""Device reports: what a device tells the cloud about its fallback answers (``docs/contract.md``,
"Device reports").

When the edge's answer to a request comes after the device's deadline, the device has already
answered from its local fallback model; it then compares the two (``edgestream/device/reconcile.py``)
and reports, per (model, edge version, fallback version), how often they agreed, plus the requests on
which they disagreed (labelling candidates: request id, model, versions, both answers; never the
input). A report is a msgpack map sent through the gateway (``Transport.report``) to
``edge.<region>.reports``, keyed by the device id, at most ``MAX_REPORT_BYTES``:

``{"v": 1, "at_ms": int, "agr": [{"model": str, "ev": int, "fv": int, "agree": int, "disagree": int}],
"dis": [{"rid": bin16, "model": str, "ev": int, "fv": int, "el": int, "es": float, "fl": int,
"fs": float}]}`` (``e*`` the edge's label and score, ``f*`` the fallback's). Unknown keys are ignored
(records evolve additively); anything else malformed is :class:`UndecodableRecord`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from edgestream.pipeline.contract import fields as f
from edgestream.pipeline.contract.envelope import (
    CONTRACT_VERSION,
    MAX_MODEL_BYTES,
    REQUEST_ID_BYTES,
    unpack_contract_map,
)
from edgestream.pipeline.contract.packing import packb
from edgestream.pipeline.errors import UndecodableRecord

MAX_REPORT_BYTES: Final = 64 * 1024
"""Largest report body (the gateway produces nothing bigger)."""
MAX_AGREEMENT_ROWS: Final = 256
"""Most agreement rows one report carries."""
MAX_CANDIDATES: Final = 1024
"""Most disagreement candidates one report carries."""
_MAX_VERSION: Final = 2**32 - 1
REPORT_BOUNDS: Final = (16 + MAX_AGREEMENT_ROWS + MAX_CANDIDATES, max(MAX_AGREEMENT_ROWS, MAX_CANDIDATES), 64)
"""A report's msgpack bounds (`unpack_contract_map`): its map, its two arrays and a map per row."""


@dataclass(frozen=True, slots=True)
class Agreement:
    """How often one (model, edge version, fallback version) agreed since the last report."""

    model: str
    edge_version: int
    fallback_version: int
    agree: int
    disagree: int

    def wire(self) -> dict[str, Any]:
        """The report's map for this row."""
        return {
            "model": self.model,
            "ev": self.edge_version,
            "fv": self.fallback_version,
            "agree": self.agree,
            "disagree": self.disagree,
        }


@dataclass(frozen=True, slots=True)
class Disagreement:
    """One request whose late edge answer disagreed with the fallback's: a labelling candidate."""

    request_id: bytes
    model: str
    edge_version: int
    fallback_version: int
    edge_label: int
    edge_score: float
    fallback_label: int
    fallback_score: float

    def wire(self) -> dict[str, Any]:
        """The report's map for this candidate."""
        return {
            "rid": self.request_id,
            "model": self.model,
            "ev": self.edge_version,
            "fv": self.fallback_version,
            "el": self.edge_label,
            "es": float(self.edge_score),
            "fl": self.fallback_label,
            "fs": float(self.fallback_score),
        }


@dataclass(frozen=True, slots=True)
class DeviceReport:
    """One report."""

    at_ms: int
    """When the device sent it (its corrected clock)."""
    agreement: tuple[Agreement, ...] = ()
    candidates: tuple[Disagreement, ...] = ()

    def to_bytes(self) -> bytes:
        """The msgpack body."""
        fields = {
            "v": CONTRACT_VERSION,
            "at_ms": self.at_ms,
            "agr": [a.wire() for a in self.agreement],
            "dis": [c.wire() for c in self.candidates],
        }
        return packb(fields)

    @classmethod
    def from_bytes(cls, raw: bytes) -> DeviceReport:
        """Parse a report; :class:`UndecodableRecord` (or ``UnsupportedVersion``) when it is not one."""
        if type(raw) is not bytes or len(raw) > MAX_REPORT_BYTES:
            raise UndecodableRecord(f"a device report is bytes of at most {MAX_REPORT_BYTES}")
        data = unpack_contract_map(raw, UndecodableRecord, bounds=REPORT_BOUNDS)
        try:
            rows = f.array(f.field(data, "agr"), "agr")
            candidates = f.array(f.field(data, "dis"), "dis")
            if len(rows) > MAX_AGREEMENT_ROWS or len(candidates) > MAX_CANDIDATES:
                raise f.FieldError("too many rows")
            return cls(
                at_ms=f.integer(f.field(data, "at_ms"), "at_ms", minimum=0),
                agreement=tuple(_agreement(f.mapping(r, "agr")) for r in rows),
                candidates=tuple(_candidate(f.mapping(c, "dis")) for c in candidates),
            )
        except ValueError as e:
            raise UndecodableRecord(f"not a device report: {str(e)[:300]}") from e


def _model(data: dict[Any, Any]) -> str:
    model = f.text(f.field(data, "model"), "model", max_chars=MAX_MODEL_BYTES)
    if not model or len(model.encode(errors="replace")) > MAX_MODEL_BYTES:
        raise f.FieldError("model must be 1..128 UTF-8 bytes")
    return model


def _version(data: dict[Any, Any], key: str) -> int:
    return f.integer(f.field(data, key), key, minimum=0, maximum=_MAX_VERSION)


def _agreement(data: dict[Any, Any]) -> Agreement:
    return Agreement(
        model=_model(data),
        edge_version=_version(data, "ev"),
        fallback_version=_version(data, "fv"),
        agree=f.count(f.field(data, "agree"), "agree"),
        disagree=f.count(f.field(data, "disagree"), "disagree"),
    )


def _candidate(data: dict[Any, Any]) -> Disagreement:
    rid = f.binary(f.field(data, "rid"), "rid", max_bytes=REQUEST_ID_BYTES)
    if len(rid) != REQUEST_ID_BYTES:
        raise f.FieldError(f"rid must be {REQUEST_ID_BYTES} bytes")
    return Disagreement(
        request_id=rid,
        model=_model(data),
        edge_version=_version(data, "ev"),
        fallback_version=_version(data, "fv"),
        edge_label=f.integer(f.field(data, "el"), "el", minimum=-(2**31), maximum=2**31 - 1),
        edge_score=f.number(f.field(data, "es"), "es"),
        fallback_label=f.integer(f.field(data, "fl"), "fl", minimum=-(2**31), maximum=2**31 - 1),
        fallback_score=f.number(f.field(data, "fs"), "fs"),
    )


def split_reports(
    at_ms: int,
    agreement: list[Agreement],
    candidates: list[Disagreement],
    max_bytes: int = MAX_REPORT_BYTES,
) -> list[bytes]:
    """Report bodies carrying all of ``agreement`` and ``candidates``, each within ``max_bytes`` and
    the row limits (the agreement rows go first)."""
    out: list[bytes] = []
    rows, cands = list(agreement), list(candidates)
    while rows or cands:
        take_rows, rows = rows[:MAX_AGREEMENT_ROWS], rows[MAX_AGREEMENT_ROWS:]
        n = min(len(cands), MAX_CANDIDATES)
        body = DeviceReport(at_ms, tuple(take_rows), tuple(cands[:n])).to_bytes()
        while len(body) > max_bytes and n > 0:
            n = max(0, n - max(1, n // 8))
            body = DeviceReport(at_ms, tuple(take_rows), tuple(cands[:n])).to_bytes()
        if len(body) > max_bytes or (n == 0 and not take_rows):
            raise ValueError(f"{max_bytes} bytes cannot hold a report's rows")
        out.append(body)
        cands = cands[n:]
    return out
