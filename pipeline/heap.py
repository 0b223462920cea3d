"""Start-up's objects out of the garbage collector's way: one full collection, then ``gc.freeze()``.

A process of ours imports onnxruntime, numpy, aiokafka, cryptography and pydantic and loads its models
before it serves: hundreds of thousands of objects that live as long as the process. CPython's full
(generation 2) collection walks all of them, and on this project's 2-core box one took 60-230 ms of a
worker's, a gateway's or the device fleet's event loop (measured with ``gc.callbacks`` in the demo);
the fleet's came while it was sending, so every device it simulates stalled that long. Frozen objects
are never walked again: a later full collection sees only what was made since. Called once a process
has started its clients and loaded its models, just before it serves; the collection it runs first
is that same pause, taken before any request waits on it.

Once frozen, the youngest generation is collected every :data:`YOUNG_THRESHOLD` allocations instead
of CPython's 700. A worker allocates a few dozen tracked objects per record (items, outputs, records
and the futures of their sends), nearly all freed by reference counting within its unit, while up to
``max_in_flight`` records' objects are alive at once: every young collection walked those again to
find almost nothing. Measured side by side (bench, the 2-core box, 2026-12-06, three alternating pairs
each): 10,000 against 700, the worker's CPU per item draining a backlog 0.071-0.083 against
0.079-0.085 ms and per request at 1,000 req/s 0.39-0.41 against 0.42-0.49 ms; then 50,000 against
10,000, 0.068-0.082 against 0.086-0.093 ms an item (capacity 11,550-13,895 against 10,299-11,091
items/s) and 0.37-0.39 against 0.40-0.41 ms a request, lower in every pair; 200,000 against 50,000,
no consistent difference (better in two pairs of three, worse in one). The cost is cyclic garbage
living until the next collection: at most that many objects, a few MB.

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
