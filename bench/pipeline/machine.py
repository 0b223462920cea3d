"""The machine and code a run measured: CPU use during a load, versions, other processes, the commit."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiokafka
import numpy as np
import onnxruntime

from bench import REPO_ROOT

_CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _busy_ticks() -> tuple[int, int]:
    """(busy CPU ticks of the whole machine, ticks stolen by the hypervisor), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq, steal


def _process_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), 0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat.rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


@dataclass(frozen=True, slots=True)
class CpuUse:
    """CPU seconds over one measured load: ours (this process, the far side, the broker) and the rest."""

    ours_s: float
    """This process, the worker or echo, and the broker."""
    others_s: float
    """Everything else on the machine (other people's runs make the numbers noisy)."""
    steal_s: float
    """Time the hypervisor gave our virtual CPUs to someone else."""


class CpuWatch:
    """Counts CPU time from ``start`` to ``stop`` (Linux /proc; zeros where there is none)."""

    def __init__(self, pids: Sequence[int]) -> None:
        self._pids = list(pids)
        self._start: tuple[int, int, int] = (0, 0, 0)

    def _sample(self) -> tuple[int, int, int]:
        try:
            busy, steal = _busy_ticks()
        except (OSError, ValueError):
            return (0, 0, 0)
        return busy, steal, sum(_process_ticks(pid) for pid in self._pids)

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> CpuUse:
        busy, steal, ours = (b - a for a, b in zip(self._start, self._sample(), strict=True))
        tick_s = 1.0 / _CLOCK_TICKS_PER_S
        return CpuUse(ours_s=ours * tick_s, others_s=max(0, busy - ours) * tick_s, steal_s=steal * tick_s)


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
    }
