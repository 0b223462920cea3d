"""Reconciliation: a late edge answer compared with the fallback answer the device already gave.

Pure (no I/O, no clock of its own). When a request's deadline passes the device answers from its
fallback (:meth:`Reconciler.fell_back`); when the edge's answer to it arrives later
(:meth:`Reconciler.late_edge`), the two are compared: the same label for a classification (labels >= 0),
scores within ``tolerance`` otherwise. Agreement is counted per (model, edge version, fallback
version); a disagreement becomes a labelling candidate (request id, model, versions, both answers,
never the input). :meth:`Reconciler.reports` drains both into report bodies
(``pipeline/contract/devicereports.py``). Fallback answers are kept for ``keep_s`` (the replay window
and then some: no edge answer comes later) and at most ``max_kept``; candidates at most
``max_candidates`` between reports (the rest counted in ``candidates_dropped``).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from edgestream.pipeline.contract.devicereports import Agreement, Disagreement, split_reports

DEFAULT_TOLERANCE: Final = 0.05
"""Largest score difference that still agrees (answers without a class label)."""
DEFAULT_KEEP_S: Final = 120.0
"""How long a fallback answer waits for its late edge answer."""


@dataclass(frozen=True, slots=True)
class Given:
    """An answer (edge or fallback) as reconciliation sees it."""

    model: str
    version: int
    label: int
    score: float


class Reconciler:
    """Fallback answers waiting for their late edge answers, and what the comparisons found."""

    def __init__(
        self,
        *,
        tolerance: float = DEFAULT_TOLERANCE,
        keep_s: float = DEFAULT_KEEP_S,
        max_kept: int = 4096,
        max_candidates: int = 1024,
    ) -> None:
        self._tolerance = tolerance
        self._keep_s = keep_s
        self._max_kept = max_kept
        self._max_candidates = max_candidates
        self._waiting: OrderedDict[bytes, tuple[float, Given]] = OrderedDict()
        self._counts: dict[tuple[str, int, int], list[int]] = {}
        self._candidates: list[Disagreement] = []
        self.candidates_dropped = 0
        """Disagreements not reported because too many waited for one report."""

    def fell_back(self, request_id: bytes, answer: Given, now_s: float) -> None:
        """The fallback answered ``request_id`` with ``answer``."""
        self._expire(now_s)
        self._waiting[request_id] = (now_s + self._keep_s, answer)
        while len(self._waiting) > self._max_kept:
            self._waiting.popitem(last=False)

    def waiting(self, request_id: bytes) -> bool:
        """Whether a fallback answer to ``request_id`` waits for its edge answer."""
        return request_id in self._waiting

    def late_edge(self, request_id: bytes, edge: Given, now_s: float) -> bool | None:
        """Compare the late edge answer with the fallback's: whether they agree (None: no fallback
        answer waits for it, e.g. a duplicate or one already expired)."""
        self._expire(now_s)
        found = self._waiting.pop(request_id, None)
        if found is None:
            return None
        fallback = found[1]
        agree = self.agrees(edge, fallback)
        row = self._counts.setdefault((edge.model, edge.version, fallback.version), [0, 0])
        row[0 if agree else 1] += 1
        if not agree:
            if len(self._candidates) < self._max_candidates:
                self._candidates.append(
                    Disagreement(
                        request_id,
                        edge.model,
                        edge.version,
                        fallback.version,
                        edge.label,
                        edge.score,
                        fallback.label,
                        fallback.score,
                    )
                )
            else:
                self.candidates_dropped += 1
        return agree

    def agrees(self, edge: Given, fallback: Given) -> bool:
        """Same class when both have one, else scores within the tolerance."""
        if edge.label >= 0 and fallback.label >= 0:
            return edge.label == fallback.label
        return abs(edge.score - fallback.score) <= self._tolerance

    def counts(self) -> dict[tuple[str, int, int], tuple[int, int]]:
        """(model, edge version, fallback version) -> (agreed, disagreed) since the last report."""
        return {key: (row[0], row[1]) for key, row in self._counts.items()}

    def pending_report(self) -> bool:
        """Whether there is anything to report."""
        return bool(self._counts or self._candidates)

    def reports(self, at_ms: int) -> list[bytes]:
        """Report bodies of everything counted since the last call (then cleared)."""
        rows = [Agreement(m, ev, fv, a, d) for (m, ev, fv), (a, d) in self.counts().items()]
        bodies = split_reports(at_ms, rows, self._candidates)
        self._counts.clear()
        self._candidates = []
        return bodies

    def _expire(self, now_s: float) -> None:
        while self._waiting:
            expires_s, _ = next(iter(self._waiting.values()))
            if expires_s > now_s:
                return
            self._waiting.popitem(last=False)
