"""Fallback reports: how a device tells the edge it answered requests with its local fallback model.

A device falls back when a reply misses its deadline; the edge cannot see that on its own (the reply
was sent, or the request never arrived). So the device reports it on its *next* record of the same
model: an optional Kafka header ``edgestream.fallbacks`` whose value is the number of that model's
requests it answered with its fallback since its previous record of that model, in ASCII decimal
(``docs/contract.md``, "Fallback reports").

The header is the device's word, not evidence: Kafka headers are outside the envelope's authenticated
data. So the worker reads it only on a record it answered (authentic, fresh, not a replay, within the
device's rate), once that record's result committed, and bounds what one record may add. A value that
is not 1 to :data:`MAX_DIGITS` ASCII digits is ignored, never an error: no header can stop a record.

Pure logic: no Kafka client here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

FALLBACKS_HEADER: Final = "edgestream.fallbacks"
"""Kafka header of a fallback report."""
MAX_DIGITS: Final = 6
"""Longest value read; a longer one is ignored."""


def fallbacks_header(count: int) -> tuple[str, bytes]:
    """The header reporting ``count`` fallbacks (``count`` >= 1)."""
    if not 1 <= count < 10**MAX_DIGITS:
        raise ValueError(f"a fallback report counts 1 to {10**MAX_DIGITS - 1}, not {count}")
    return FALLBACKS_HEADER, str(count).encode("ascii")


def reported_fallbacks(headers: Iterable[tuple[str, bytes]]) -> int:
    """The fallbacks a record's headers report: the first ``edgestream.fallbacks`` header's value, 0
    when there is none or it is malformed (empty, too long, anything but ASCII digits)."""
    for name, value in headers:
        if name == FALLBACKS_HEADER:
            if isinstance(value, bytes) and 0 < len(value) <= MAX_DIGITS and value.isdigit():
                return int(value)
            return 0
    return 0


class FallbackReports:
    """A device's side of the reports: fallbacks counted per model until its next request of that
    model carries them (:func:`fallbacks_header`); a count past what the header holds is sent in
    parts, one per request."""

    def __init__(self) -> None:
        self._unsent: dict[tuple[str, str], int] = {}

    def fell_back(self, device_id: str, model: str) -> None:
        """``device_id`` answered a request of ``model`` with its fallback."""
        key = (device_id, model)
        self._unsent[key] = self._unsent.get(key, 0) + 1

    def header(self, device_id: str, model: str) -> tuple[str, bytes] | None:
        """The header for ``device_id``'s next request of ``model`` (None: nothing to report); what
        it reports is no longer pending."""
        count = self._unsent.pop((device_id, model), 0)
        if count <= 0:
            return None
        most = 10**MAX_DIGITS - 1
        if count > most:
            self._unsent[(device_id, model)] = count - most
            count = most
        return fallbacks_header(count)
