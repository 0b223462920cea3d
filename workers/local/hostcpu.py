"""The machine's CPU while the demo's devices ran, from ``/proc/stat``: how many cores were busy, and how
much of the machine the hypervisor stole (time another guest ran on our cores).

The demo shares a 2-core box with everything it starts, so its latency follows how busy the box was; on a
virtual machine, stolen time slows every process at once without showing in any of them. The summary
says both, so that a slow run can be told apart from a slow box.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PROC_STAT = Path("/proc/stat")


@dataclass(frozen=True, slots=True)
class CpuTicks:
    """The machine's aggregate CPU time since boot, in clock ticks."""

    busy: int
    """user + nice + system + irq + softirq."""
    idle: int
    """idle + iowait."""
    steal: int
    """Time the hypervisor ran something else while this machine's virtual CPUs wanted to run."""


def parse_proc_stat(text: str) -> CpuTicks:
    """The aggregate ``cpu`` line of ``/proc/stat`` (its fields: user nice system idle iowait irq softirq
    steal ...; kernels before 2.6.11 have no steal, counted as 0). Raises ``ValueError`` without it."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            values = [int(v) for v in fields[1:9]]
            if len(values) < 7:
                raise ValueError(f"/proc/stat's cpu line has {len(values)} fields: {line!r}")
            user, nice, system, idle, iowait, irq, softirq = values[:7]
            steal = values[7] if len(values) > 7 else 0
            return CpuTicks(user + nice + system + irq + softirq, idle + iowait, steal)
    raise ValueError("/proc/stat has no aggregate cpu line")


def read_ticks(path: Path = PROC_STAT) -> CpuTicks | None:
    """The machine's ticks now; None where ``path`` cannot be read or parsed (not Linux)."""
    try:
        return parse_proc_stat(path.read_text())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class HostCpu:
    """The machine's CPU between two readings."""

    cores: int
    """Online CPUs."""
    busy_cores: float
    """Cores' worth of busy time, on average (0 to ``cores``)."""
    steal_share: float
    """Share of the machine's time the hypervisor stole (0 to 1)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """One line for the demo's summary."""
        return (
            f"the box while the devices ran: {self.busy_cores:.2f} of {self.cores} cores busy, "
            f"{self.steal_share:.1%} of its time stolen by the hypervisor"
        )


def host_cpu(before: CpuTicks, after: CpuTicks, cores: int | None = None) -> HostCpu | None:
    """What the machine did between ``before`` and ``after``; None when no time passed between them."""
    n = cores or os.cpu_count() or 1
    busy = after.busy - before.busy
    total = busy + (after.idle - before.idle) + (after.steal - before.steal)
    if total <= 0:
        return None
    return HostCpu(n, round(n * busy / total, 3), round((after.steal - before.steal) / total, 4))
