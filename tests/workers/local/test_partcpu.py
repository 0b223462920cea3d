"""Per-part CPU of the demo (``workers/local/partcpu.py``): reading ``/proc``, the demo's process tree,
which part a process is, and the sums."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgestream.workers.local.partcpu import (
    PartSampler,
    ProcessTicks,
    descendants,
    parse_stat,
    part_cpu,
    part_of,
    parts_line,
)


def _stat(pid: int, name: str, ppid: int, utime: int, stime: int) -> str:
    rest = ["S", str(ppid), *["0"] * 9, str(utime), str(stime), "0", "0", "20", "0", "1"]
    return f"{pid} ({name}) " + " ".join(rest) + "\n"


def test_a_stat_line_is_read_after_the_last_parenthesis_of_its_command() -> None:
    assert parse_stat(_stat(42, "a (b) c", 7, 150, 25)) == (7, 175)
    with pytest.raises(ValueError, match="fields"):
        parse_stat("42 (short) S 1 2 3\n")
    with pytest.raises(ValueError, match="substring not found"):
        parse_stat("no command at all")


def test_descendants_are_the_root_and_everything_below_it() -> None:
    tree = {1: 0, 10: 1, 11: 10, 12: 11, 20: 1, 30: 99}
    processes = {pid: ProcessTicks(ppid, 0, "") for pid, ppid in tree.items()}
    assert descendants(processes, 10) == {10, 11, 12}
    assert descendants(processes, 30) == {30}


@pytest.mark.parametrize(
    ("command", "pid", "part"),
    [
        ("/usr/bin/java -Xmx1g kafka.Kafka /h/server.properties", 5, "broker"),
        ("anything at all", 9, "broker"),  # the broker's own pid, whatever its command line
        ("/venv/bin/python -m edgestream worker", 6, "workers"),
        ("/venv/bin/python -m edgestream gateway", 6, "gateways"),
        ("/venv/bin/python -m edgestream aggregate run", 6, "aggregator"),
        (
            "/venv/bin/python -B -c from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5)",
            6,
            "story",
        ),
        ("/venv/bin/python .venv/bin/edgestream demo", 1, "fleet"),
        ("/bin/sh -c true", 6, None),
        ("/venv/bin/python -m edgestream workers-and-more", 6, None),
    ],
)
def test_a_process_is_the_part_its_command_line_names(command: str, pid: int, part: str | None) -> None:
    assert part_of(command, pid=pid, root=1, broker_pid=9) == part


def test_parts_add_their_processes_ticks_between_the_readings() -> None:
    first = {1: ProcessTicks(0, 100, "demo"), 2: ProcessTicks(1, 50, "w1"), 3: ProcessTicks(1, 70, "w2")}
    last = {
        1: ProcessTicks(0, 300, "demo"),
        2: ProcessTicks(1, 250, "w1"),
        4: ProcessTicks(1, 100, "w3"),  # started meanwhile: from zero
        9: ProcessTicks(0, 900, "broker"),  # in no part: not counted
    }  # 3 exited before the second reading: not counted
    parts = {1: "fleet", 2: "workers", 3: "workers", 4: "workers"}
    got = part_cpu(first, last, parts, seconds=2.0, requests=400, ticks_per_s=100.0)
    assert [(p.part, p.processes) for p in got] == [("workers", 2), ("fleet", 1)]
    workers, fleet = got
    assert workers.cores == pytest.approx(1.5)  # (200 + 100) ticks over 2 s
    assert workers.ms_per_request == pytest.approx(7.5)  # 3,000 ms over 400 requests
    assert fleet.cores == pytest.approx(1.0)
    assert part_cpu(first, last, parts, seconds=0.0, requests=1, ticks_per_s=100.0) == []
    assert part_cpu(first, last, parts, seconds=1.0, requests=0, ticks_per_s=100.0)[0].ms_per_request is None
    assert parts_line(got) == (
        "cores used while the devices ran: workers 1.50 (7.50 ms/request), fleet 1.00 (5.00 ms/request)"
    )


def _process(proc: Path, pid: int, ppid: int, ticks: int, command: str) -> None:
    (proc / str(pid)).mkdir(exist_ok=True)
    (proc / str(pid) / "stat").write_text(_stat(pid, command.split()[0][-15:], ppid, ticks, 0))
    (proc / str(pid) / "cmdline").write_bytes(command.replace(" ", "\0").encode() + b"\0")


def test_the_sampler_counts_the_demos_tree_and_its_broker_only(tmp_path: Path) -> None:
    _process(tmp_path, 100, 1, 1_000, "python edgestream demo")
    _process(tmp_path, 101, 100, 10, "python -m edgestream worker")
    _process(tmp_path, 102, 101, 5, "python -m edgestream aggregate run")  # a grandchild
    _process(tmp_path, 200, 1, 500, "java kafka.Kafka server.properties")  # not a child: the pid says
    _process(tmp_path, 300, 1, 50, "python -m edgestream worker")  # another demo's: not ours
    (tmp_path / "self").mkdir()
    sampler = PartSampler(200, root=100, proc=tmp_path)
    sampler.start()
    _process(tmp_path, 100, 1, 1_100, "python edgestream demo")
    _process(tmp_path, 101, 100, 60, "python -m edgestream worker")
    _process(tmp_path, 102, 101, 25, "python -m edgestream aggregate run")
    _process(tmp_path, 200, 1, 700, "java kafka.Kafka server.properties")
    _process(tmp_path, 300, 1, 950, "python -m edgestream worker")
    got = {p.part: p.cores for p in sampler.stop(seconds=1.0, requests=10, ticks_per_s=100.0)}
    assert got == {"broker": 2.0, "workers": 0.5, "aggregator": 0.2, "fleet": 1.0}


def _started(child: subprocess.Popen[bytes]) -> None:
    """Wait until ``child`` runs its own command line (it shows its parent's until it has exec'd)."""
    deadline = time.monotonic() + 10
    while b"edgestream\0worker" not in Path(f"/proc/{child.pid}/cmdline").read_bytes():
        assert time.monotonic() < deadline, "the child never started"
        time.sleep(0.01)


def test_the_sampler_reads_a_real_child_burning_cpu() -> None:
    burn = "import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass\n"
    sampler = PartSampler(None)
    child = subprocess.Popen([sys.executable, "-c", burn, "edgestream", "worker"])
    try:
        _started(child)
        sampler.start()
        started = time.monotonic()
        assert child.wait(timeout=30) == 0
        # An exited child is not counted (it is gone at the second reading): read while it lives.
    finally:
        child.kill()
    assert "workers" not in {p.part for p in sampler.stop(time.monotonic() - started, 1)}
    sampler = PartSampler(None)
    child = subprocess.Popen([sys.executable, "-c", burn + "time.sleep(30)\n", "edgestream", "worker"])
    try:
        _started(child)
        sampler.start()
        started = time.monotonic()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until it has burnt its 0.4 s
            _, ticks = parse_stat(Path(f"/proc/{child.pid}/stat").read_text())
            if ticks * 1000 // os.sysconf("SC_CLK_TCK") >= 350:
                break
            time.sleep(0.05)
        parts = {p.part: p for p in sampler.stop(time.monotonic() - started, 4)}
    finally:
        child.kill()
        child.wait()
    assert parts["workers"].processes == 1
    assert parts["workers"].ms_per_request is not None
    assert 0.2 * 1000 / 4 <= parts["workers"].ms_per_request <= 0.6 * 1000 / 4  # ~0.4 s over 4 requests
    assert parts["fleet"].processes == 1  # this process, the root
