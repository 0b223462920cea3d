"""Child processes of the local tools: start one with its output in a log file, wait for the ready file
it writes, and stop it (SIGTERM, then SIGKILL past a bound).

A :class:`Child` is one started process. Readiness is a file the child writes once it can serve (the
workers' ``READY_FILE``); a child that exits first, or is not ready within its bound, raises
:class:`ChildFailed` with the tail of its log. Stopping is the graceful path first (SIGTERM lets a
worker finish its unit and leave its group), then SIGKILL. Every wait has a blocking and an ``async``
form, for callers outside and inside an event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from edgestream.pipeline.errors import EdgestreamError

log = logging.getLogger(__name__)

STOP_TIMEOUT_S: Final = 30.0
"""How long a child gets to exit after SIGTERM before it is killed."""
TAIL_LINES: Final = 20
"""Lines of a child's log quoted when it fails."""
PARENT_ENV: Final = "EDGESTREAM_EXIT_WITH_PARENT"
"""Set by :meth:`Child.start` to the starting process's pid: a child that runs ``edgestream`` asks the
kernel for SIGTERM when that process dies (:func:`exit_with_parent`), so a killed demo or bench
leaves no worker running on (one orphan spinning on a dead broker skewed a whole bench)."""
_PR_SET_PDEATHSIG: Final = 1
"""``prctl`` option: the signal the kernel sends this process when its parent dies (Linux)."""


def exit_with_parent(env: Mapping[str, str]) -> bool:
    """When ``env`` names a parent (:data:`PARENT_ENV`), have the kernel send this process SIGTERM when
    that parent dies; SIGTERM at once when it is already gone. True when armed (Linux only)."""
    import ctypes

    want = env.get(PARENT_ENV, "")
    if not want.isdigit() or not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        return False
    if os.getppid() != int(want):  # the parent died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)
    return True


def schedule_idle(pid: int) -> bool:
    """Put every thread of process ``pid`` under Linux's ``SCHED_IDLE`` policy: it then runs only on CPU
    time no other process wants, and any other process that wakes takes the CPU from it at once (a
    niced process keeps a share and a time slice of its own). Threads it starts later inherit the
    policy; the threads are read again until none is new, so one started meanwhile is not missed. False
    where the policy does not exist (not Linux), is not permitted (logged), or the process has exited.
    A user may lower the policy of their own processes; only a privileged one can raise it back."""
    policy = getattr(os, "SCHED_IDLE", None)
    if policy is None:
        return False
    done: set[int] = set()
    try:
        while tids := {int(t) for t in os.listdir(f"/proc/{pid}/task")} - done:
            for tid in tids:
                with contextlib.suppress(ProcessLookupError):  # a thread that has ended meanwhile
                    os.sched_setscheduler(tid, policy, os.sched_param(0))
            done |= tids
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError as err:
        log.warning("process %d could not be given the idle scheduling policy: %s", pid, err)
        return False
    return True


def edgestream_command(*args: str) -> list[str]:
    """``python -m edgestream <args>``, with this interpreter."""
    return [sys.executable, "-m", "edgestream", *args]


class ChildFailed(EdgestreamError):
    """A child process exited before it was ready, or was not ready in time."""

    reason = "child_process"


@dataclass(frozen=True, slots=True)
class Child:
    """One started child process, its stdout and stderr going to ``log_file``."""

    name: str
    """Its name in messages (e.g. ``worker eu-west``)."""
    proc: subprocess.Popen[bytes]
    log_file: Path
    started_s: float = field(default_factory=time.monotonic)
    """When it started (``time.monotonic``): readiness is bounded from then."""

    @classmethod
    def start(
        cls,
        name: str,
        command: Sequence[str],
        *,
        env: Mapping[str, str],
        log_file: Path,
        cwd: Path | None = None,
        append: bool = False,
        new_session: bool = False,
        nice: int = 0,
        idle: bool = False,
    ) -> Child:
        """Start ``command`` with exactly ``env``; stdin closed; output to ``log_file`` (appended to
        when ``append``); in a session of its own when ``new_session`` (a signal to this process group
        does not reach it); ``nice`` added to its CPU niceness (``nice(1)``, which execs the command in
        the same process: a positive value makes it yield the CPU to the rest of the box); under the
        ``SCHED_IDLE`` policy when ``idle`` (:func:`schedule_idle`, as soon as it has started), which
        yields it the CPU entirely where the policy exists."""
        log_file.parent.mkdir(parents=True, exist_ok=True)
        argv = ["nice", "-n", str(nice), *command] if nice else list(command)
        with log_file.open("ab" if append else "wb") as out:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env={**env, PARENT_ENV: str(os.getpid())},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=new_session,
            )
        if idle:
            schedule_idle(proc.pid)
        log.debug("started %s (pid %d)", name, proc.pid)
        return cls(name, proc, log_file)

    @property
    def returncode(self) -> int | None:
        """Its exit status, or None while it runs."""
        return self.proc.poll()

    def running(self) -> bool:
        """Whether it has not exited yet."""
        return self.proc.poll() is None

    def tail(self, lines: int = TAIL_LINES) -> str:
        """The last ``lines`` of its log."""
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def is_ready(self, ready_file: Path, timeout_s: float) -> bool:
        """Whether ``ready_file`` exists; raises :class:`ChildFailed` when the child has exited or
        ``timeout_s`` has passed since it started."""
        if ready_file.exists():
            return True
        if not self.running():
            raise ChildFailed(f"{self.name} exited with {self.returncode}:\n{self.tail()}")
        if time.monotonic() - self.started_s > timeout_s:
            raise ChildFailed(f"{self.name} not ready after {timeout_s:g} s")
        return False

    def wait_ready(self, ready_file: Path, timeout_s: float, *, poll_s: float = 0.1) -> None:
        """Block until ``ready_file`` exists (see :meth:`is_ready`)."""
        while not self.is_ready(ready_file, timeout_s):
            time.sleep(poll_s)

    async def wait_ready_async(self, ready_file: Path, timeout_s: float, *, poll_s: float = 0.05) -> None:
        """:meth:`wait_ready` inside an event loop."""
        while True:
            if self.is_ready(ready_file, timeout_s):
                return
            await asyncio.sleep(poll_s)

    def send_signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` (e.g. SIGSTOP, SIGCONT, SIGKILL), unless it has exited."""
        if self.running():
            log.debug("sending %s to %s (pid %d)", sig.name, self.name, self.proc.pid)
            self.proc.send_signal(sig)

    def terminate(self) -> None:
        """Send SIGTERM, unless it has exited."""
        self.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL; its exit status."""
        self.terminate()
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return self._kill(timeout_s)

    async def stop_async(self, timeout_s: float = STOP_TIMEOUT_S, *, poll_s: float = 0.05) -> int:
        """:meth:`stop` inside an event loop."""
        self.terminate()
        deadline_s = time.monotonic() + timeout_s
        while self.running():
            if time.monotonic() > deadline_s:
                return self._kill(timeout_s)
            await asyncio.sleep(poll_s)
        return self.proc.wait()

    def _kill(self, timeout_s: float) -> int:
        log.warning("%s did not stop in %g s; killing it", self.name, timeout_s)
        self.proc.kill()
        return self.proc.wait()


def stop_all(children: Iterable[Child], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM to every child first (they stop side by side), then :meth:`Child.stop` each in turn."""
    children = list(children)
    for child in children:
        child.terminate()
    for child in children:
        child.stop(timeout_s)


@contextmanager
def stopped_at_exit(children: list[Child], timeout_s: float = STOP_TIMEOUT_S) -> Iterator[list[Child]]:
    """Yield ``children``; when the block ends, however it ends, :func:`stop_all` of them, those the
    block appended too."""
    try:
        yield children
    finally:
        stop_all(children, timeout_s)
