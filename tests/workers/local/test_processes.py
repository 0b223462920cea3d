"""Child processes: readiness by file, failures with the log's tail, SIGTERM then SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

from edgestream.workers.local.processes import (
    Child,
    ChildFailed,
    schedule_idle,
    stop_all,
    stopped_at_exit,
)

if TYPE_CHECKING:
    from pathlib import Path


def _python(tmp_path: Path, name: str, code: str) -> Child:
    return Child.start(
        name, [sys.executable, "-c", code], env=dict(os.environ), log_file=tmp_path / f"{name}.log"
    )


def _ready_then_sleep(ready: Path, *, ignore_sigterm: bool = False) -> str:
    ignore = "signal.signal(signal.SIGTERM, signal.SIG_IGN); " if ignore_sigterm else ""
    return f"import pathlib, signal, time; {ignore}pathlib.Path({str(ready)!r}).touch(); time.sleep(60)"


def test_a_ready_child_is_stopped_with_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "a.ready"
    child = _python(tmp_path, "a", _ready_then_sleep(ready))
    child.wait_ready(ready, timeout_s=30)
    assert child.running()
    assert child.stop() == -signal.SIGTERM
    assert child.returncode == -signal.SIGTERM


def test_a_niced_child_runs_niced_in_the_process_it_was_started_as(tmp_path: Path) -> None:
    ready = tmp_path / "n.ready"
    tmp, out = str(tmp_path / "n.tmp"), str(ready)
    code = (
        f"import os, pathlib, time; t = pathlib.Path({tmp!r}); "
        "t.write_text(f'{os.getpid()} {os.nice(0)}'); "
        f"t.rename({out!r}); time.sleep(60)"
    )
    child = Child.start(
        "n", [sys.executable, "-c", code], env=dict(os.environ), log_file=tmp_path / "n.log", nice=7
    )
    child.wait_ready(ready, timeout_s=30)
    pid, niceness = (int(v) for v in ready.read_text().split())
    assert niceness == os.nice(0) + 7
    assert pid == child.proc.pid  # nice(1) exec'd the command: signals reach it
    assert child.stop() == -signal.SIGTERM


needs_idle_policy = pytest.mark.skipif(
    not hasattr(os, "SCHED_IDLE"), reason="the SCHED_IDLE scheduling policy is Linux's"
)


_THREADS_THEN_READY = """
import os, pathlib, sys, threading, time

def run(started: threading.Event) -> None:
    tids.append(threading.get_native_id())
    started.set()
    time.sleep(60)

tids = [threading.get_native_id()]
for _ in range(int(sys.argv[2])):
    started = threading.Event()
    threading.Thread(target=run, args=(started,), daemon=True).start()
    started.wait()
ready = pathlib.Path(sys.argv[1])
tmp = ready.with_suffix(".tmp")
tmp.write_text(" ".join(map(str, tids)) + f" {os.nice(0)}")
tmp.rename(ready)
time.sleep(60)
"""
"""A child that starts ``argv[2]`` threads, then writes its threads' ids and its niceness to ``argv[1]``."""


def _with_threads(
    tmp_path: Path, name: str, threads: int, *, nice: int = 0, idle: bool = False
) -> tuple[Child, list[int], int]:
    """Start :data:`_THREADS_THEN_READY`; the child, its threads' ids (its own first) and its niceness."""
    script, ready = tmp_path / f"{name}.py", tmp_path / f"{name}.ready"
    script.write_text(_THREADS_THEN_READY)
    argv = [sys.executable, str(script), str(ready), str(threads)]
    child = Child.start(
        name, argv, env=dict(os.environ), log_file=tmp_path / f"{name}.log", nice=nice, idle=idle
    )
    child.wait_ready(ready, timeout_s=30)
    *tids, niceness = map(int, ready.read_text().split())
    return child, tids, niceness


def _policies(tids: list[int]) -> set[int]:
    return {os.sched_getscheduler(tid) for tid in tids}


@needs_idle_policy
def test_an_idle_child_and_the_threads_it_starts_later_run_under_the_idle_policy(tmp_path: Path) -> None:
    child, tids, niceness = _with_threads(tmp_path, "i", 1, nice=3, idle=True)
    with stopped_at_exit([child]):
        assert len(tids) == 2
        assert tids[0] == child.proc.pid
        assert _policies(tids) == {os.SCHED_IDLE}
        assert niceness == os.nice(0) + 3  # nice(1) still applies


@needs_idle_policy
def test_every_thread_a_process_already_runs_is_given_the_idle_policy(tmp_path: Path) -> None:
    child, tids, _ = _with_threads(tmp_path, "t", 3)
    with stopped_at_exit([child]):
        assert len(tids) == 4
        assert _policies(tids) == {os.SCHED_OTHER}
        assert schedule_idle(child.proc.pid)
        assert _policies(tids) == {os.SCHED_IDLE}
    assert not schedule_idle(child.proc.pid)  # exited (and reaped): nothing to set


def test_a_child_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    ready = tmp_path / "b.ready"
    child = _python(tmp_path, "b", _ready_then_sleep(ready, ignore_sigterm=True))
    child.wait_ready(ready, timeout_s=30)
    assert child.stop(timeout_s=0.5) == -signal.SIGKILL


def test_a_child_that_exits_before_it_is_ready_fails_with_its_log(tmp_path: Path) -> None:
    child = _python(tmp_path, "c", "import sys; print('boom', flush=True); sys.exit(3)")
    with pytest.raises(ChildFailed, match=r"c exited with 3:\nboom"):
        child.wait_ready(tmp_path / "c.ready", timeout_s=30)


def test_a_child_not_ready_in_time_fails(tmp_path: Path) -> None:
    child = _python(tmp_path, "d", "import time; time.sleep(60)")
    with stopped_at_exit([child]), pytest.raises(ChildFailed, match=r"d not ready after 0\.2 s"):
        child.wait_ready(tmp_path / "d.ready", timeout_s=0.2)
    assert not child.running()


def test_signals_reach_a_running_child_and_not_an_exited_one(tmp_path: Path) -> None:
    ready = tmp_path / "s.ready"
    child = _python(tmp_path, "s", _ready_then_sleep(ready))
    child.wait_ready(ready, timeout_s=30)
    child.send_signal(signal.SIGSTOP)
    child.send_signal(signal.SIGCONT)
    assert child.running()
    child.send_signal(signal.SIGKILL)
    assert child.proc.wait(timeout=30) == -signal.SIGKILL
    child.send_signal(signal.SIGKILL)
    assert child.returncode == -signal.SIGKILL


async def test_the_async_waits(tmp_path: Path) -> None:
    ready = tmp_path / "e.ready"
    child = _python(tmp_path, "e", _ready_then_sleep(ready))
    await child.wait_ready_async(ready, timeout_s=30)
    assert await child.stop_async() == -signal.SIGTERM


def test_stop_all_stops_every_child_and_output_is_appended(tmp_path: Path) -> None:
    log_file = tmp_path / "f.log"
    log_file.write_text("before\n")
    children = [
        Child.start(
            name,
            [sys.executable, "-c", f"print({name!r}, flush=True); import time; time.sleep(60)"],
            env=dict(os.environ),
            log_file=log_file,
            append=True,
        )
        for name in ("f", "g")
    ]
    stop_all(children)
    assert not any(child.running() for child in children)
    assert log_file.read_text().splitlines()[0] == "before"


_PARENT = """
import sys, time
from pathlib import Path
from edgestream.workers.local.processes import Child
command = [sys.executable, "-c", sys.argv[1]]
child = Child.start("child", command, env={"PATH": ""}, log_file=Path(sys.argv[2]))
print(child.proc.pid, flush=True)
time.sleep(600)
"""
_CHILD = """
import os, time
from edgestream.workers.local.processes import exit_with_parent
assert exit_with_parent(os.environ)
print("armed", flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux's")
def test_a_child_exits_when_the_process_that_started_it_is_killed(tmp_path: Path) -> None:
    """A demo or bench killed with SIGKILL leaves no child running (they used to spin on, orphaned)."""
    log = tmp_path / "child.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, _CHILD, str(log)], stdout=subprocess.PIPE, env=env, text=True
    )
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    deadline = time.monotonic() + 30
    while "armed" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, "the child never armed its parent-death signal"
        time.sleep(0.05)
    assert _alive(child_pid)
    parent.kill()
    parent.wait()
    parent.stdout.close()
    while _alive(child_pid):
        assert time.monotonic() < deadline + 30, "the child outlived the process that started it"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False
