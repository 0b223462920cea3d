"""The CPU each part of the demo used while its devices ran, from ``/proc/<pid>/stat``: the broker, the
edge workers, the gateways, the aggregator, the story and the demo's own process (the simulated
fleet), in cores and in ms of CPU per device request.

``hostcpu.py`` says how busy the box was; this says who made it busy, so a slow run's summary points at
the part that took the cores (issue 13's CPU goals are per part and per request). The parts are the
demo's own process tree (its children and theirs) and the local broker; a process counts under the
part its command line names. Two readings only, when the devices start and when they stop (a reader
in between would take the GIL from the fleet, whose clock measures the round trips): a process that
exits before the second (the story's, a worker the outage kills) is not counted, one that starts
meanwhile (the restarted worker) counts from zero.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

PROC: Final = Path("/proc")
PARTS: Final = ("broker", "workers", "gateways", "aggregator", "story", "fleet")
"""The parts, in the order the summary lists them."""


@dataclass(frozen=True, slots=True)
class ProcessTicks:
    """One process's CPU time since it started, in clock ticks."""

    ppid: int
    """Its parent's pid."""
    ticks: int
    """utime + stime."""
    command: str
    """Its command line, arguments joined by spaces."""


def parse_stat(text: str) -> tuple[int, int]:
    """(ppid, utime + stime) from one ``/proc/<pid>/stat`` line. The command name in parentheses may
    itself hold spaces and parentheses: the fields are read after its last ``)``. Raises ``ValueError``
    on a line without them."""
    fields = text[text.rindex(")") + 2 :].split()
    if len(fields) < 13:
        raise ValueError(f"a stat line with {len(fields)} fields after the command")
    return int(fields[1]), int(fields[11]) + int(fields[12])


def read_processes(proc: Path = PROC) -> dict[int, ProcessTicks]:
    """Every process's ticks now (those that exit while being read are left out)."""
    found: dict[int, ProcessTicks] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid, ticks = parse_stat((entry / "stat").read_text())
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue
        found[int(entry.name)] = ProcessTicks(ppid, ticks, command.strip())
    return found


def descendants(processes: Mapping[int, ProcessTicks], root: int) -> set[int]:
    """``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    for pid, process in processes.items():
        children.setdefault(process.ppid, []).append(pid)
    found, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def part_of(command: str, *, pid: int, root: int, broker_pid: int | None) -> str | None:
    """Which part a process of the demo is, by its pid and command line (None: none of them, e.g. a
    shell the demo ran)."""
    if pid == broker_pid or ("java" in command and "kafka" in command.lower()):
        return "broker"
    if pid == root:
        return "fleet"
    words = command.split()
    if "edgestream" in command:
        for word, part in (("worker", "workers"), ("gateway", "gateways"), ("aggregate", "aggregator")):
            if word in words:
                return part
    if "multiprocessing" in command:  # the story's process (story_process.py), spawned
        return "story"
    return None


class PartSampler:
    """Per-part CPU between two readings (``start`` and ``stop``), for the demo's process tree."""

    def __init__(self, broker_pid: int | None, *, root: int | None = None, proc: Path = PROC) -> None:
        self._broker_pid = broker_pid
        self._root = os.getpid() if root is None else root
        self._proc = proc
        self._first: dict[int, ProcessTicks] = {}
        self._parts: dict[int, str] = {}

    def _read(self) -> dict[int, ProcessTicks]:
        processes = read_processes(self._proc)
        ours = descendants(processes, self._root)
        if self._broker_pid is not None:
            ours.add(self._broker_pid)
        for pid in ours:
            process = processes.get(pid)
            if process is not None and pid not in self._parts:
                part = part_of(process.command, pid=pid, root=self._root, broker_pid=self._broker_pid)
                if part is not None:
                    self._parts[pid] = part
        return {pid: processes[pid] for pid in ours if pid in processes and pid in self._parts}

    def start(self) -> None:
        """The first reading."""
        self._first = self._read()

    def stop(self, seconds: float, requests: int, ticks_per_s: float | None = None) -> list[PartCpu]:
        """Each part's CPU from `start` to now, over ``seconds`` and ``requests`` device requests."""
        hz = ticks_per_s or float(os.sysconf("SC_CLK_TCK"))
        return part_cpu(self._first, self._read(), self._parts, seconds, requests, hz)


@dataclass(frozen=True, slots=True)
class PartCpu:
    """One part's CPU while the devices ran."""

    part: str
    """``broker``, ``workers``, ``gateways``, ``aggregator``, ``story`` or ``fleet``."""
    processes: int
    """Its processes seen."""
    cores: float
    """Cores' worth of CPU, on average."""
    ms_per_request: float | None
    """CPU ms per device request sent (None: none sent)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def part_cpu(
    first: Mapping[int, ProcessTicks],
    last: Mapping[int, ProcessTicks],
    parts: Mapping[int, str],
    seconds: float,
    requests: int,
    ticks_per_s: float,
) -> list[PartCpu]:
    """Each part's CPU from the ticks of its processes at ``first`` and ``last`` (a process missing from
    ``first`` started meanwhile: from zero), in :data:`PARTS` order; parts with no process left out."""
    if seconds <= 0:
        return []
    used: dict[str, float] = {}
    counted: dict[str, int] = {}
    for pid, end in last.items():
        part = parts.get(pid)
        if part is None:
            continue
        start = first.get(pid)
        ticks = end.ticks - (start.ticks if start is not None else 0)
        used[part] = used.get(part, 0.0) + max(0, ticks) / ticks_per_s
        counted[part] = counted.get(part, 0) + 1
    return [
        PartCpu(
            part,
            counted[part],
            used[part] / seconds,
            used[part] * 1000.0 / requests if requests else None,
        )
        for part in PARTS
        if part in used
    ]


def parts_line(parts: Iterable[PartCpu]) -> str:
    """One line for the demo's summary."""
    shown = [
        f"{p.part} {p.cores:.2f}"
        + ("" if p.ms_per_request is None else f" ({p.ms_per_request:.2f} ms/request)")
        for p in parts
    ]
    return "cores used while the devices ran: " + ", ".join(shown) if shown else ""
