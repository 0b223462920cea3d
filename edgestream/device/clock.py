"""Server time for a device: the offset between the gateway's clock and the device's wall clock.

A device stamps every envelope's ``ts`` with its corrected clock (``docs/contract.md`` section 9,
"Clocks"): ``corrected = local + offset``. Each ``sync_clock`` exchange gives an offset known to within
half its round trip, so of the last few samples the one with the smallest round trip wins.
Deadlines, back-off and the replay window are measured on the monotonic clock, never on this one.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from edgestream.device.transport import ClockSample

KEEP_SAMPLES: Final = 8
"""Samples kept; the best of them (smallest round trip) gives the offset."""


class ClockOffset:
    """The device's estimate of server time - its wall clock."""

    def __init__(self, keep: int = KEEP_SAMPLES) -> None:
        self._samples: deque[ClockSample] = deque(maxlen=keep)
        self._best: ClockSample | None = None

    def add(self, sample: ClockSample) -> None:
        """Take one exchange into account."""
        self._samples.append(sample)
        self._best = min(self._samples, key=lambda s: s.rtt_ms)

    @property
    def offset_ms(self) -> float:
        """Server time - local wall clock, ms (0 before any sample: the platform's time is used)."""
        return 0.0 if self._best is None else self._best.offset_ms

    @property
    def rtt_ms(self) -> float | None:
        """The best sample's round trip (None before any)."""
        return None if self._best is None else self._best.rtt_ms

    def now_ms(self) -> int:
        """The corrected wall clock, unix ms: what ``ts`` and UUIDv7 times carry."""
        return int(time.time() * 1000.0 + self.offset_ms)
