"""How late the device's event loop has been waking: the fallback's reserve grows with it.

A call answers from the fallback ``fallback_reserve_ms`` before its deadline, so that the fallback's
run and a late wake of the event loop still fit. On a busy device the loop wakes later than a fixed
reserve allows (a garbage collection, other apps, a simulator running many devices in one process):
the answer comes, but past the deadline. :class:`LoopLag` keeps the largest lateness the loop showed
in the last ``window_s`` seconds, from timers the client wakes on anyway (its ticker, a call's
wait), so measuring costs no extra wake-up; :meth:`LoopLag.reserve_s` adds it to the fixed reserve,
at most ``cap_s``. A device that got busy starts its fallbacks earlier for a while; once the loop is
prompt again for ``window_s``, the reserve is back to the fixed one.

Pure logic on a clock given in every call (monotonic seconds); unit-tested without a loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(slots=True)
class LoopLag:
    """The largest recent lateness of an event loop's timers (module docstring)."""

    window_s: float = 10.0
    """How long a lateness counts; 0 turns the adaptive part off."""
    cap_s: float = 0.1
    """The most the reserve grows by, however late the loop was."""
    buckets: int = 10
    """The window is kept as this many per-slice maxima (constant memory)."""
    _maxima: list[float] = field(default_factory=list)
    _slices: list[int] = field(default_factory=list)
    peak_s: float = 0.0
    """The largest lateness ever noted (for reports)."""
    samples: int = 0

    def note(self, due_s: float, woke_s: float) -> None:
        """A timer due at ``due_s`` ran at ``woke_s``."""
        late_s = woke_s - due_s
        if not math.isfinite(late_s) or late_s <= 0.0 or self.window_s <= 0.0:
            return
        self.samples += 1
        self.peak_s = max(self.peak_s, late_s)
        if not self._maxima:
            self._maxima = [0.0] * self.buckets
            self._slices = [-1] * self.buckets
        index = int(woke_s // (self.window_s / self.buckets))
        slot = index % self.buckets
        if self._slices[slot] != index:
            self._slices[slot], self._maxima[slot] = index, 0.0
        self._maxima[slot] = max(self._maxima[slot], late_s)

    def recent_s(self, now_s: float) -> float:
        """The largest lateness noted in the last ``window_s`` (within one slice's width)."""
        if not self._maxima or self.window_s <= 0.0:
            return 0.0
        index = int(now_s // (self.window_s / self.buckets))
        return max(
            (m for m, i in zip(self._maxima, self._slices, strict=True) if index - self.buckets < i <= index),
            default=0.0,
        )

    def reserve_s(self, base_s: float, now_s: float) -> float:
        """The fallback's reserve now: ``base_s`` plus the recent lateness, at most ``cap_s`` more."""
        return base_s + min(self.cap_s, self.recent_s(now_s))
