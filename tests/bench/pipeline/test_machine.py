"""CPU counted from outside the processes: ``/proc`` parsing and the per-request and idle maths."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.pipeline.machine import CpuUse, CpuWatch, busy_ticks, process_ticks

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
