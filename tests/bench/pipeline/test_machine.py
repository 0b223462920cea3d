"""CPU counted from outside the processes: ``/proc`` parsing and the per-request and idle maths."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.pipeline.machine import (
    CpuUse,
    CpuWatch,
    busy_ticks,
    is_jit_thread,
    jit_seconds,
    jit_thread_ticks,
    process_ticks,
)

# /proc/<pid>/stat of a process whose name holds a space and a parenthesis: utime 1234, stime 56.
STAT = "4242 (py thon) x) S 1 4242 4242 0 -1 4194560 300 0 0 0 1234 56 7 8 20 0 3 0 100 0 0"


def test_process_ticks_are_utime_plus_stime_counted_after_the_name() -> None:
    assert process_ticks(STAT) == 1234 + 56


def test_busy_ticks_leave_out_idle_and_iowait_and_report_steal() -> None:
    stat = "cpu  100 2 30 5000 40 6 7 9 0 0\ncpu0 50 1 15 2500 20 3 3 4 0 0\n"
    assert busy_ticks(stat) == (100 + 2 + 30 + 6 + 7, 9)


def test_per_request_and_core_share_are_each_process_own() -> None:
    use = CpuUse(
        ours_s=1.5, others_s=0.0, steal_s=0.0, processes_s={"worker": 0.5, "broker": 1.0}, wall_s=4.0
    )
    assert use.ms_per_request(2000) == {"worker": 0.25, "broker": 0.5}
    assert use.ms_per_request(0) is None
    assert use.core_share() == {"worker": 0.125, "broker": 0.25}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_the_watch_counts_a_busy_process_and_not_an_idle_one() -> None:
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.5)  # both started (imports done)
        watch = CpuWatch({"busy": busy.pid, "idle": idle.pid, "gone": 2**22 + 1})
        watch.start()
        time.sleep(1.0)
        use = watch.stop()
    finally:
        for child in (busy, idle):
            child.kill()
            child.wait()
    assert use.processes_s["busy"] > 5 * use.processes_s["idle"]
    assert use.processes_s["gone"] == 0.0  # no such process: nothing, never negative
    assert use.ours_s == pytest.approx(sum(use.processes_s.values()))


def _task(proc: Path, pid: int, tid: int, comm: str, utime: int, stime: int) -> None:
    task = proc / str(pid) / "task" / str(tid)
    task.mkdir(parents=True)
    (task / "comm").write_text(comm + "\n")
    (task / "stat").write_text(f"{tid} ({comm}) S 1 1 1 0 -1 0 0 0 0 0 {utime} {stime} 0 0 20 0 1 0 1 0 0")


def test_only_the_jvm_compiler_threads_are_counted_each_by_its_thread_id(tmp_path: Path) -> None:
    _task(tmp_path, 7, 7, "java", 900, 100)
    _task(tmp_path, 7, 21, "C2 CompilerThre", 300, 20)
    _task(tmp_path, 7, 22, "C1 CompilerThre", 40, 2)
    _task(tmp_path, 7, 23, "data-plane-kafk", 500, 50)
    assert jit_thread_ticks(7, tmp_path) == {21: 320, 22: 42}
    assert jit_thread_ticks(8, tmp_path) == {}  # no such process
    assert [is_jit_thread(c) for c in ("C2 CompilerThre", "C1 CompilerThre", "C2 Compiler", "VM Thread")] == [
        True,
        True,
        False,
        False,
    ]


def test_jit_seconds_count_a_thread_started_meanwhile_and_never_less_than_nothing() -> None:
    tick_s = 1.0 / os.sysconf("SC_CLK_TCK")
    before = {21: 300, 22: 40, 23: 10}
    after = {21: 350, 24: 5}  # 22 and 23 stopped: their last ticks are unknown, not negative
    assert jit_seconds(before, after) == pytest.approx((50 + 5) * tick_s)
    assert jit_seconds({21: 400}, {21: 350}) == 0.0


BUSY_COMPILER = """
import ctypes, sys, threading
named_both = threading.Barrier(3)
def named(name, busy):
    ctypes.CDLL(None).prctl(15, name, 0, 0, 0)  # PR_SET_NAME: this thread's comm
    named_both.wait()
    while busy:
        pass
    threading.Event().wait()
threading.Thread(target=named, args=(b"C2 CompilerThread0", True), daemon=True).start()
threading.Thread(target=named, args=(b"C1 CompilerThread0", False), daemon=True).start()
named_both.wait()
print("named", flush=True)
sys.stdin.read()  # until the test closes it
"""


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_the_watch_counts_a_busy_compiler_thread_apart_from_the_process() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", BUSY_COMPILER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as jvm:
        try:
            assert jvm.stdout is not None
            assert jvm.stdout.readline() == "named\n"  # both threads named
            watch = CpuWatch({"broker": jvm.pid}, jvm_pid=jvm.pid)
            watch.start()
            time.sleep(1.0)  # the span measured
            use = watch.stop()
            quiet = CpuWatch({"broker": jvm.pid})
            quiet.start()
            time.sleep(0.2)  # the span measured
            unwatched = quiet.stop()
        finally:
            jvm.kill()
    assert 0.2 < use.broker_jit_s <= use.processes_s["broker"]  # ~1 s spinning; a loaded box gives less
    assert unwatched.broker_jit_s == 0.0  # no JVM named: nothing counted


def test_the_compiler_threads_never_count_more_than_their_process(monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel rounds each thread's time apart from its process's total: over one span the threads
    # may read a tick more than the process (CI read 1.00 s of JIT against 0.99 s).
    from bench.pipeline import machine

    process = iter([1000, 1099])  # the broker: 99 ticks over the span
    threads = iter([{7: 500}, {7: 600}])  # its compiler thread: 100 ticks over the same span
    monkeypatch.setattr(machine, "_process_ticks", lambda pid: next(process))
    monkeypatch.setattr(machine, "jit_thread_ticks", lambda pid: next(threads))
    watch = CpuWatch({"broker": 42}, jvm_pid=42)
    watch.start()
    use = watch.stop()
    tick_s = 1.0 / os.sysconf("SC_CLK_TCK")
    assert use.processes_s["broker"] == pytest.approx(99 * tick_s)
    assert use.broker_jit_s == pytest.approx(99 * tick_s)  # clamped to the process, not 100 ticks


def test_compiler_threads_under_their_process_are_counted_as_read(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.pipeline import machine

    process = iter([1000, 1099])
    threads = iter([{7: 500}, {7: 540}])
    monkeypatch.setattr(machine, "_process_ticks", lambda pid: next(process))
    monkeypatch.setattr(machine, "jit_thread_ticks", lambda pid: next(threads))
    watch = CpuWatch({"broker": 42}, jvm_pid=42)
    watch.start()
    use = watch.stop()
    assert use.broker_jit_s == pytest.approx(40 / os.sysconf("SC_CLK_TCK"))


def test_cpu_idle_facts_read_what_the_kernel_says_and_none_where_it_says_nothing(tmp_path: Path) -> None:
    from bench.pipeline.machine import cpu_idle_facts

    cpuidle = tmp_path / "devices/system/cpu/cpuidle"
    cpuidle.mkdir(parents=True)
    (cpuidle / "current_driver").write_text("haltpoll\n")
    (cpuidle / "current_governor_ro").write_text("haltpoll\n")
    expected = {"driver": "haltpoll", "governor": "haltpoll", "guest_halt_poll_ns": None}
    assert cpu_idle_facts(tmp_path) == expected
    params = tmp_path / "module/haltpoll/parameters"
    params.mkdir(parents=True)
    (params / "guest_halt_poll_ns").write_text("200000\n")
    assert cpu_idle_facts(tmp_path)["guest_halt_poll_ns"] == "200000"
    assert set(cpu_idle_facts(tmp_path / "absent").values()) == {None}


def test_the_wake_penalty_times_the_same_work_hot_and_after_an_idle_gap() -> None:
    from bench.pipeline.machine import wake_penalty

    started = time.monotonic()
    facts = wake_penalty(rounds=20, idle_s=0.002)
    assert time.monotonic() - started >= 20 * 0.002  # it did sleep before each timed piece
    assert facts["idle_ms"] == pytest.approx(2.0)
    assert facts["hot_us"] > 0
    assert facts["after_idle_us"] > 0
    assert facts["ratio"] == pytest.approx(facts["after_idle_us"] / facts["hot_us"], rel=0.02)
