"""The profiler's pieces: stacks put in the right bucket, a window's samples written with the CPU of
what ran in it."""

from __future__ import annotations

import gc
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from bench.profile.buckets import bucket_of, read_collapsed
from bench.profile.sampler import Sampler


def test_the_innermost_domain_frame_names_the_bucket() -> None:
    send = ["thread:MainThread", "asyncio/runners.py:run", "workers/edge/txnsink.py:_transaction"]
    assert bucket_of([*send, "aiokafka/producer/producer.py:send", "aiokafka/cluster.py:x"]) == (
        "aiokafka produce/send"
    )
    assert bucket_of(send) == "transactions/commit"
    admit = ["thread:MainThread", "workers/edge/admission.py:admit", "pipeline/contract/codec.py:decompress"]
    assert bucket_of(admit) == "worker: admission", "contract helpers count for their caller"
    assert bucket_of([*admit, "opentelemetry/trace/__init__.py:start_span"]) == "metrics/tracing"
    assert bucket_of(["thread:MainThread", "asyncio/runners.py:run"]).startswith("event loop")
    assert bucket_of(["thread:MainThread", "aiokafka/conn.py:_read"]).startswith("aiokafka connection")


def _burn(cpu_s: float) -> None:
    end = time.thread_time() + cpu_s
    while time.thread_time() < end:
        sum(range(500))


def _profiled(tmp_path: Path, work: Callable[[], None]) -> Path:
    """Run ``work`` in one profiling window of a sampler ticking every 2 ms; the window's facts file."""
    control = tmp_path / "on"
    sampler = Sampler(control, tmp_path, "t", interval_s=0.002)
    sampler.start()
    gc.collect()
    try:
        control.touch()
        time.sleep(0.2)  # the sampler notices the control file
        work()
        control.unlink()
        deadline = time.monotonic() + 5
        while not list(tmp_path.glob("*.json")) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sampler.close()
    (facts_file,) = tmp_path.glob(f"t-{os.getpid()}-1.json")
    return facts_file


def _burn_then_free_cycles() -> None:
    _burn(0.3)
    cycles: list[list[object]] = [[] for _ in range(50_000)]
    for c in cycles:
        c.append(c)
    del cycles
    gc.collect()


def test_a_window_writes_its_stacks_with_the_cpu_spent_in_them(tmp_path: Path) -> None:
    facts_file = _profiled(tmp_path, _burn_then_free_cycles)
    facts = json.loads(facts_file.read_text())
    assert facts["sampled_cpu_s"] <= facts["process_cpu_s"]
    assert facts["gc_cpu_s"] > 0, "the collection in the window is counted"
    assert facts["gc_collections"][2] >= 1, "gc.collect() is a full collection"
    assert facts["gc_collected"] >= 1_000, "the cycles it freed"
    lines = facts_file.with_suffix(".collapsed").read_text().splitlines()
    burnt = sum(int(line.rpartition(" ")[2]) for line in lines if "_burn" in line) / 1e6
    assert burnt >= 0.5 * 0.3, f"the burning function got {burnt:.3f} s of 0.3 s CPU"
    assert read_collapsed(facts_file.with_suffix(".collapsed")), "every stack lands in a bucket"


def _hold_and_burn() -> None:
    """Burn CPU in frames whose locals the sampler's ticks interrupt (no cycle of their own), then
    collect."""
    for _ in range(3):
        held = [object() for _ in range(100)]
        _burn(0.1)
        del held
    gc.collect()


def test_the_sampler_leaves_no_garbage_of_its_own(tmp_path: Path) -> None:
    """A tick that kept its own frame in a reference cycle kept every frame it interrupted, and their
    locals, alive until a collection: the profiled worker's collector then freed five objects an
    item, all of them the sampler's, and its CPU counted as the worker's."""
    facts = json.loads(_profiled(tmp_path, _hold_and_burn).read_text())
    assert facts["gc_collections"][2] >= 1
    assert facts["gc_collected"] < 40, "garbage from the ticks (80 in this window without the fix)"
