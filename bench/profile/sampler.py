"""A stack sampler that weighs each sample by the CPU its thread used since the last one.

Every ``interval_s`` of the process's CPU (``ITIMER_PROF``), a ``SIGPROF`` handler reads every
thread's CPU clock (``pthread_getcpuclockid``) and Python stack (``sys._current_frames``; the main
thread's is the frame the signal interrupted), and adds the thread's CPU since the previous sample to
that stack. A thread that waited (epoll, a lock) used no CPU and adds
nothing, so the sums are CPU, not wall time. Native code without Python frames (uvloop's C, OpenSSL,
onnxruntime) is counted under the innermost Python frame that called it; ``perf`` splits that part by
library. The garbage collector's CPU is summed apart too (``gc.callbacks``: it is also inside the
stacks, under whatever allocation tripped it). Sampling runs only while the control file exists (the
bench creates it for the measured window and removes it after); each window's samples are written,
as collapsed stacks (``frame;frame;... microseconds``), to ``<out_dir>/<name>-<pid>-<n>.collapsed``
with a JSON of the process's, the sampler's and the collector's CPU beside it.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from types import CodeType, FrameType
from typing import Any, Final

CONTROL_ENV: Final = "EDGESTREAM_PROFILE_CONTROL"
"""The control file: sampling runs while it exists."""
OUT_ENV: Final = "EDGESTREAM_PROFILE_OUT_DIR"
NAME_ENV: Final = "EDGESTREAM_PROFILE_NAME"

_POLL_S: Final = 0.05


_ROOT: Final = str(Path(__file__).resolve().parents[2]) + "/"
_STDLIB: Final = f"/lib/python{sys.version_info.major}.{sys.version_info.minor}/"


def _label(code: CodeType) -> str:
    """``path/inside/package.py:function``: the repository root (and ``edgestream/``, whose
    ``pipeline`` and ``workers`` are links to the root's), site-packages and the stdlib cut off."""
    path = code.co_filename
    if path.startswith(_ROOT):
        path = path.removeprefix(_ROOT).removeprefix("edgestream/")
    else:
        for marker in ("site-packages/", _STDLIB):
            i = path.rfind(marker)
            if i >= 0:
                path = path[i + len(marker) :]
                break
    return f"{path}:{code.co_name}"


def _stack(frame: FrameType | None) -> tuple[CodeType, ...]:
    codes: list[CodeType] = []
    while frame is not None:
        codes.append(frame.f_code)
        frame = frame.f_back
    codes.reverse()
    return tuple(codes)


class Sampler:
    """Samples this process's threads while ``control`` exists; see the module's docstring.

    Construct and start it in the main thread: the samples are taken by a ``SIGPROF`` handler
    (``ITIMER_PROF``: every ``interval_s`` of the process's CPU), which Python runs in the main thread
    at its next bytecode, with the frame it interrupted. That frame gets the main thread's CPU since
    the last sample; each other thread's CPU goes to its stack of the moment. A thread that sampled
    only when it lets go of the GIL would file short bursts of work under the loop's idle wait.
    """

    def __init__(self, control: Path, out_dir: Path, name: str, interval_s: float = 0.005) -> None:
        self._control = control
        self._out_dir = out_dir
        self._name = name
        self._interval_s = interval_s
        self._windows = 0
        self._active = False
        self._overhead_s = 0.0
        self._stacks: defaultdict[tuple[str, tuple[CodeType, ...]], float] = defaultdict(float)
        self._last: dict[int, float] = {}
        self._clocks: dict[int, int] = {}
        self._main = threading.main_thread().ident
        self._thread = threading.Thread(target=self._run, name="profile-sampler", daemon=True)
        self._closed = threading.Event()
        self._gc_s = 0.0
        self._gc_started: dict[int, float] = {}
        self._gc_runs = [0, 0, 0]
        """Collections per generation in the window."""
        self._gc_collected = 0
        """Objects those collections freed (cyclic garbage)."""
        self._previous: Any = signal.SIG_DFL

    def start(self) -> None:
        self._previous = signal.signal(signal.SIGPROF, self._on_tick)
        self._thread.start()

    def close(self) -> None:
        """Stop the sampling thread (a window under way is written first); restore ``SIGPROF``'s
        handler. From the main thread."""
        self._closed.set()
        self._thread.join()
        signal.signal(signal.SIGPROF, self._previous)

    def _on_tick(self, signum: int, frame: FrameType | None) -> None:
        if not self._active:
            return
        entered_s = time.thread_time()
        frames = sys._current_frames()
        try:
            self._sample(frames, frame)
        finally:
            # ``frames`` holds this handler's own frame: left as it is, each tick would be a reference
            # cycle keeping the interrupted frames and their locals alive until the collector ran
            # (a drain's young collections freed 5 objects an item, all of them this).
            frames.clear()
        # The handler runs in the main thread: its own CPU is the sampler's, not the next frame's.
        left_s = time.thread_time()
        self._overhead_s += left_s - entered_s
        if self._main in self._last:
            self._last[self._main] += left_s - entered_s

    def _sample(self, frames: dict[int, FrameType], frame: FrameType | None) -> None:
        """Add each thread's CPU since the last tick to its current stack (the main thread's: the frame
        the signal interrupted)."""
        me = self._thread.ident
        names = {t.ident: t.name for t in threading.enumerate()}
        for ident, current in frames.items():
            if ident == me:
                continue
            try:
                clock = self._clocks.get(ident)
                if clock is None:
                    clock = self._clocks[ident] = time.pthread_getcpuclockid(ident)
                cpu_s = time.clock_gettime(clock)
            except OSError:  # the thread ended meanwhile
                self._clocks.pop(ident, None)
                continue
            before = self._last.get(ident)
            self._last[ident] = cpu_s
            if before is None or cpu_s <= before:
                continue
            where = frame if ident == self._main else current
            self._stacks[(names.get(ident, "?"), _stack(where))] += cpu_s - before

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        """The collector's CPU: it runs in the thread whose allocation tripped it, start to stop."""
        ident = threading.get_ident()
        if phase == "start":
            self._gc_started[ident] = time.thread_time()
        elif ident in self._gc_started:
            self._gc_s += time.thread_time() - self._gc_started.pop(ident)
            self._gc_runs[info["generation"]] += 1
            self._gc_collected += info["collected"]

    def _run(self) -> None:
        while not self._closed.is_set():
            if self._control.exists():
                self._window()
            time.sleep(_POLL_S)

    def _window(self) -> None:
        self._stacks.clear()
        self._last.clear()
        self._overhead_s = 0.0
        process0, wall0 = time.process_time(), time.monotonic()
        self._gc_s = 0.0
        self._gc_started.clear()
        self._gc_runs = [0, 0, 0]
        self._gc_collected = 0
        self._active = True
        gc.callbacks.append(self._on_gc)
        signal.setitimer(signal.ITIMER_PROF, self._interval_s, self._interval_s)
        while self._control.exists() and not self._closed.is_set():
            time.sleep(_POLL_S)
        signal.setitimer(signal.ITIMER_PROF, 0.0)
        gc.callbacks.remove(self._on_gc)
        self._active = False
        stacks = dict(self._stacks)
        self._dump(
            stacks,
            process_s=time.process_time() - process0,
            sampler_s=self._overhead_s,
            gc_s=self._gc_s,
            wall_s=time.monotonic() - wall0,
        )

    def _dump(
        self,
        stacks: dict[tuple[str, tuple[CodeType, ...]], float],
        *,
        process_s: float,
        sampler_s: float,
        gc_s: float,
        wall_s: float,
    ) -> None:
        self._windows += 1
        stem = self._out_dir / f"{self._name}-{os.getpid()}-{self._windows}"
        lines = [
            ";".join([f"thread:{thread}", *(_label(c) for c in codes)]) + f" {round(s * 1e6)}"
            for (thread, codes), s in stacks.items()
        ]
        stem.with_suffix(".collapsed").write_text("\n".join(lines) + "\n")
        facts = {
            "process_cpu_s": process_s,
            "sampler_cpu_s": sampler_s,
            "gc_cpu_s": gc_s,
            "gc_collections": list(self._gc_runs),
            "gc_collected": self._gc_collected,
            "sampled_cpu_s": sum(stacks.values()),
            "wall_s": wall_s,
            "interval_s": self._interval_s,
        }
        stem.with_suffix(".json").write_text(json.dumps(facts, indent=2) + "\n")


def start_from_env(default_name: str) -> Sampler | None:
    """A started sampler when the profiling variables are set, else None."""
    control, out_dir = os.environ.get(CONTROL_ENV), os.environ.get(OUT_ENV)
    if not control or not out_dir:
        return None
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    sampler = Sampler(Path(control), Path(out_dir), os.environ.get(NAME_ENV, default_name))
    sampler.start()
    return sampler
