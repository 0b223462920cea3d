"""Start-up's objects out of the garbage collector's way: one full collection, then ``gc.freeze()``.

A process of ours imports onnxruntime, numpy, aiokafka, cryptography and pydantic and loads its models
before it serves: hundreds of thousands of objects that live as long as the process. CPython's full
(generation 2) collection walks all of them, and on this project's 2-core box one took 60-230 ms of a
worker's, a gateway's or the device fleet's event loop (measured with ``gc.callbacks`` in the demo);
the fleet's came while it was sending, so every device it simulates stalled that long. Frozen objects
are never walked again: a later full collection sees only what was made since. Called once a process
has started its clients and loaded its models, just before it serves; the collection it runs first
is that same pause, taken before any request waits on it.

Once frozen, the youngest generation is collected every :data:`YOUNG_THRESHOLD` allocations (net of
deallocations) instead of CPython's 700. A worker allocates a few dozen tracked objects per record
(items, outputs, records and the futures of their sends), nearly all freed by reference counting
within its unit, so at 700 its young collections ran a few times a second and found almost nothing;
at 50,000 they run only where tracked objects really pile up. Counted with ``gc.callbacks`` in bench
runs (2026-12-06: a load at 1,000 req/s, then a drain of 30,000): after the freeze a worker ran
180-350 young and 16-31 middle collections at 700, 0.05-0.08 s of CPU (1-1.5% of its 5-6 s), and none
at 10,000 or 50,000. End to end the difference is within the box's noise: alternating pairs seemed to
show 6-16% less CPU per item, but over three batches the run started first in a pair won 8 of the 9
pairs whichever setting it had, so those figures measured the order, not the threshold. The cost is
cyclic garbage living until the next collection: at most that many objects, a few MB.

Only a process that opted in freezes (:func:`enable`, called by the ``edgestream`` command's entry
point): library code run inside another program, a test session among them, leaves that program's
collector alone (a frozen object that later becomes cyclic garbage is never freed).
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Final

log = logging.getLogger(__name__)

YOUNG_THRESHOLD: Final = 50_000
"""Allocations (less deallocations) of tracked objects between two collections of the youngest
generation, once the start-up heap is frozen (CPython's default: 700)."""

_enabled = False


def enable() -> None:
    """Let :func:`freeze_startup_heap` freeze in this process (the ``edgestream`` command's own)."""
    global _enabled
    _enabled = True


def freeze_startup_heap(what: str) -> int:
    r"""Collect once, then freeze every object alive and collect the young generation every
    :data:`YOUNG_THRESHOLD` allocations; the number frozen (0 where not :func:`enable`\ d). ``what``
    names the process in the log line."""
    if not _enabled:
        return 0
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
    frozen = gc.get_freeze_count()
    log.debug(
        "%s: froze %d start-up objects in %.1f ms", what, frozen, (time.perf_counter() - started) * 1000
    )
    return frozen
