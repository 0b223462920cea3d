"""`freeze_startup_heap`: only a process that opted in freezes its start-up objects."""

from __future__ import annotations

import gc
import json
import subprocess
import sys

from edgestream.pipeline import heap


def test_a_process_that_did_not_opt_in_keeps_its_collector_as_it_was() -> None:
    before, threshold = gc.get_freeze_count(), gc.get_threshold()
    assert heap.freeze_startup_heap("test") == 0
    assert gc.get_freeze_count() == before
    assert gc.get_threshold() == threshold


def test_an_opted_in_process_freezes_what_is_alive_and_a_full_collection_then_walks_only_the_rest() -> None:
    """In a fresh interpreter (a frozen test session would never free its later cyclic garbage)."""
    code = (
        "import gc, json\n"
        "import numpy\n"
        "from edgestream.pipeline import heap\n"
        "before = gc.get_threshold()\n"
        "heap.enable()\n"
        "frozen = heap.freeze_startup_heap('t')\n"
        "alive = [[i] for i in range(1000)]\n"
        "gc.collect()\n"
        "after = gc.get_threshold()\n"
        "print(json.dumps([frozen, gc.get_freeze_count(), len(gc.get_objects(2)), before, after]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    frozen, count, in_gen2, before, after = json.loads(out.stdout)
    assert frozen == count > 10_000  # numpy and the package's modules, at least
    assert in_gen2 < frozen // 5  # the full collection's set: what was made after the freeze
    assert after == [heap.YOUNG_THRESHOLD, *before[1:]]  # the older generations' as they were
