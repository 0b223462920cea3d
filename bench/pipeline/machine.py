"""The machine and code a run measured: CPU use per process during a load (from ``/proc``, outside the
processes), versions, other processes, the commit."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiokafka
import numpy as np
import onnxruntime

from bench import REPO_ROOT
from edgestream.workers.local.hostcpu import parse_proc_stat

_CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def busy_ticks(stat: str) -> tuple[int, int]:
    """(busy CPU ticks of the whole machine, ticks stolen by the hypervisor) from ``/proc/stat``'s text
    (the demo's own reading of it, ``workers/local/hostcpu.py``)."""
    ticks = parse_proc_stat(stat)
    return ticks.busy, ticks.steal


def process_ticks(stat: str) -> int:
    """utime + stime (all threads, children not included) from ``/proc/<pid>/stat``'s text; the command
    name in parentheses may hold spaces and parentheses, so fields are counted after the last ``)``."""
    fields = stat.rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def _process_ticks(pid: int) -> int:
    """utime + stime of a process, 0 once it is gone."""
    try:
        return process_ticks(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, ValueError, IndexError):
        return 0


def main_thread_schedstat(pid: int, proc: Path = Path("/proc")) -> tuple[int, int]:
    """(ns the process's main thread ran, ns it waited runnable for a CPU) from its ``schedstat``;
    (0, 0) once it is gone or where the kernel keeps no schedstats. For a Python process the main
    thread is the event loop: busy near 100% of the wall, it is the bottleneck; waiting long on the
    run queue, it was short of CPU rather than of work."""
    try:
        fields = (proc / str(pid) / "task" / str(pid) / "schedstat").read_text().split()
        return int(fields[0]), int(fields[1])
    except (OSError, ValueError, IndexError):
        return 0, 0


JIT_THREAD_PREFIXES = ("C1 CompilerThre", "C2 CompilerThre")
"""How HotSpot's JIT compiler threads are named (``C2 CompilerThread0``, cut to the 15 characters a
thread's ``comm`` holds)."""


def is_jit_thread(comm: str) -> bool:
    """Whether a thread's ``comm`` names one of HotSpot's JIT compiler threads."""
    return comm.startswith(JIT_THREAD_PREFIXES)


def jit_thread_ticks(pid: int, proc: Path = Path("/proc")) -> dict[int, int]:
    """utime + stime of each JIT compiler thread of the JVM ``pid``, by thread id ({} once it is gone).
    By thread, because HotSpot starts and stops compiler threads as its queue grows and drains: a sum
    over the threads alive now would drop a stopped thread's whole history."""
    ticks: dict[int, int] = {}
    try:
        tasks = list((proc / str(pid) / "task").iterdir())
    except OSError:
        return ticks
    for task in tasks:
        try:
            if is_jit_thread((task / "comm").read_text().strip()):
                ticks[int(task.name)] = process_ticks((task / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue  # the thread stopped meanwhile
    return ticks


def jit_seconds(before: Mapping[int, int], after: Mapping[int, int]) -> float:
    """CPU seconds the JIT compiler threads used between two ``jit_thread_ticks`` samples: each thread
    alive at ``after`` since ``before`` (all of it for a thread started meanwhile). A thread that stopped
    meanwhile is not counted: a little less, never a negative count."""
    ticks = sum(max(0, t - before.get(tid, 0)) for tid, t in after.items())
    return ticks / _CLOCK_TICKS_PER_S


@dataclass(frozen=True, slots=True)
class CpuUse:
    """CPU seconds over one measured span: each watched process, ours in all, and the rest."""

    ours_s: float
    """The watched processes together."""
    others_s: float
    """Everything else on the machine (other people's runs make the numbers noisy)."""
    steal_s: float
    """Time the hypervisor gave our virtual CPUs to someone else."""
    processes_s: dict[str, float]
    """Per watched process, by role: ``worker`` (the far side: the worker, the echo or the peer),
    ``broker`` (the Kafka JVM), ``fleet`` (this process: the devices)."""
    wall_s: float
    """Seconds the span lasted."""
    broker_jit_s: float = 0.0
    """Of the broker's CPU, what its JIT compiler threads used: compiling while a load is measured
    takes CPU from every process on the machine (a run-in broker has long compiled its hot paths)."""

    def ms_per_request(self, requests: int) -> dict[str, float] | None:
        """Each process's CPU milliseconds per request; None without requests."""
        if requests <= 0:
            return None
        return {role: 1000.0 * s / requests for role, s in self.processes_s.items()}

    def core_share(self) -> dict[str, float]:
        """Each process's share of one core over the span (0.05: 5% of a core)."""
        return {role: s / self.wall_s if self.wall_s > 0 else 0.0 for role, s in self.processes_s.items()}


class CpuWatch:
    """Counts CPU time from ``start`` to ``stop`` per process (Linux /proc; zeros where there is none)."""

    def __init__(self, pids: Mapping[str, int], jvm_pid: int | None = None) -> None:
        """``jvm_pid``: a JVM (the broker) whose JIT compiler threads' CPU is counted too."""
        self._pids = dict(pids)
        self._jvm_pid = jvm_pid
        self._start: tuple[int, int, dict[str, int]] = (0, 0, {})
        self._start_jit: dict[int, int] = {}
        self._start_s = 0.0

    def _sample(self) -> tuple[int, int, dict[str, int]]:
        per_process = {role: _process_ticks(pid) for role, pid in self._pids.items()}
        try:
            busy, steal = busy_ticks(Path("/proc/stat").read_text())
        except (OSError, ValueError):
            return (0, 0, per_process)
        return busy, steal, per_process

    def _jit(self) -> dict[int, int]:
        return {} if self._jvm_pid is None else jit_thread_ticks(self._jvm_pid)

    def start(self) -> None:
        self._start_s = time.monotonic()
        self._start = self._sample()
        self._start_jit = self._jit()

    def stop(self) -> CpuUse:
        busy0, steal0, procs0 = self._start
        # The compiler threads read after the processes at the start and before them at the stop, so
        # their span lies inside the process's.
        jit_s = jit_seconds(self._start_jit, self._jit())
        busy1, steal1, procs1 = self._sample()
        tick_s = 1.0 / _CLOCK_TICKS_PER_S
        # A process that exited meanwhile reads 0: never count less than nothing.
        processes = {role: max(0, procs1[role] - procs0.get(role, 0)) * tick_s for role in procs1}
        # The kernel scales and rounds down each thread's CPU time apart from its process's total, so
        # the threads' ticks can still read one more than the process's over the same span (seen in CI:
        # 1.00 s of JIT against 0.99 s). They are part of the process: never count more than it.
        jvm_s = [processes[role] for role, pid in self._pids.items() if pid == self._jvm_pid]
        if jvm_s:
            jit_s = min(jit_s, jvm_s[0])
        ours_s = sum(processes.values())
        return CpuUse(
            ours_s=ours_s,
            others_s=max(0.0, (busy1 - busy0) * tick_s - ours_s),
            steal_s=(steal1 - steal0) * tick_s,
            processes_s=processes,
            wall_s=time.monotonic() - self._start_s,
            broker_jit_s=jit_s,
        )


def code_facts() -> dict[str, Any]:
    """The commit this run measured and the pipeline's files that differ from it (where git is)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", "pipeline", "topics", "workers", "edgestream"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "uncommitted": None}
    return {"commit": head, "uncommitted": sorted(line[3:] for line in status.splitlines())}


def foreign_processes() -> dict[str, int]:
    """Kafka brokers and edgestream workers running now (at the start of a run: none of them ours)."""
    counts = {"kafka_brokers": 0, "edgestream_workers": 0}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"kafka.Kafka" in args:
            counts["kafka_brokers"] += 1
        elif b"edgestream" in args and b"worker" in args:
            counts["edgestream_workers"] += 1
    return counts


WAKE_IDLE_S = 0.003
"""The idle gap before each timed piece of work of ``wake_penalty``: about the worker's paced fetch
interval (5 ms) less its work, and what a light load leaves between two records."""


def wake_penalty(rounds: int = 200, idle_s: float = WAKE_IDLE_S) -> dict[str, float]:
    """µs (median) of a sum over 64 KB of floats run right after the same sum (``hot_us``) and right
    after sleeping ``idle_s`` (``after_idle_us``), alternating, and their ratio. On a virtual machine
    whose idle CPUs halt at once, the work after a sleep finds its data gone from the caches another
    guest or the host used meanwhile: on the AMD EPYC dev box (cpuidle ``haltpoll``,
    ``guest_halt_poll_ns`` 0) this sum took 4-5 µs hot and 22-35 µs after 3 ms of idle, and an
    onnxruntime call of a medium zoo model 10 µs hot and 80-220 µs after 3 ms of idle (37 µs with the
    CPUs kept from halting by spinners at idle priority) (2026-12-06). Every pipeline cycle that follows
    an idle gap pays this, so CPU per request at light loads reads higher on such a machine than on one
    whose CPUs stay awake."""
    values = np.random.default_rng(0).random(8192)  # 64 KB: fits the caches, evicted while idle

    hot: list[int] = []
    after_idle: list[int] = []
    values.sum()
    for _ in range(rounds):
        started = time.perf_counter_ns()
        values.sum()
        hot.append(time.perf_counter_ns() - started)
        time.sleep(idle_s)
        started = time.perf_counter_ns()
        values.sum()
        after_idle.append(time.perf_counter_ns() - started)
    hot_us = float(np.median(hot)) / 1000.0
    idle_us = float(np.median(after_idle)) / 1000.0
    return {
        "idle_ms": idle_s * 1000.0,
        "hot_us": round(hot_us, 2),
        "after_idle_us": round(idle_us, 2),
        "ratio": round(idle_us / hot_us, 2) if hot_us > 0 else float("nan"),
    }


def cpu_idle_facts(sys_dir: Path = Path("/sys")) -> dict[str, str | None]:
    """How the machine's idle CPUs wait: the cpuidle driver and governor, and on a KVM guest with the
    haltpoll governor how long an idle CPU polls before it halts (``guest_halt_poll_ns``; 0: it halts at
    once). None where the file is not there."""

    def read(path: str) -> str | None:
        try:
            return (sys_dir / path).read_text().strip()
        except OSError:
            return None

    return {
        "driver": read("devices/system/cpu/cpuidle/current_driver"),
        "governor": read("devices/system/cpu/cpuidle/current_governor_ro")
        or read("devices/system/cpu/cpuidle/current_governor"),
        "guest_halt_poll_ns": read("module/haltpoll/parameters/guest_halt_poll_ns"),
    }


def machine_facts(kafka_version: str) -> dict[str, Any]:
    cpu_model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / (1 << 20), 1)
    return {
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "memory_gib": mem_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "aiokafka": aiokafka.__version__,
        "numpy": np.__version__,
        "kafka": kafka_version,
        "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
        "cpu_idle": cpu_idle_facts(),
    }
