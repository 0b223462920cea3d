"""The bench's side of profiling: the environment that makes a far-side process sample itself, the
bench process's own sampler (the fleet runs in it), and the measured window during which the samplers
run and ``perf`` (where installed) records the same processes natively."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from bench.profile.sampler import CONTROL_ENV, NAME_ENV, OUT_ENV, Sampler

log = logging.getLogger(__name__)

_own: Sampler | None = None


def control_file(profile_dir: Path) -> Path:
    """Sampling runs while this file exists."""
    return profile_dir / "sampling.on"


def profiled_command(module: str, args: list[str]) -> list[str]:
    """``python -m <module> args`` run under the sampler."""
    return [sys.executable, "-m", "bench.profile", "exec", module, *args]


def profile_env(profile_dir: Path, name: str) -> dict[str, str]:
    """The variables that make a process started by ``profiled_command`` sample as ``name``."""
    return {CONTROL_ENV: str(control_file(profile_dir)), OUT_ENV: str(profile_dir), NAME_ENV: name}


def _own_sampler(profile_dir: Path) -> None:
    global _own
    if _own is None:
        profile_dir.mkdir(parents=True, exist_ok=True)
        _own = Sampler(control_file(profile_dir), profile_dir, "fleet")
        _own.start()


@contextlib.asynccontextmanager
async def window(profile_dir: Path, pids: Mapping[str, int]) -> AsyncIterator[None]:
    """Sample every profiled process (and this one: the fleet) while the block runs; ``perf record``
    each of ``pids`` meanwhile where ``perf`` is installed (``<name>.perf.data``)."""
    _own_sampler(profile_dir)
    perf = shutil.which("perf")
    recorders: list[asyncio.subprocess.Process] = []
    if perf is not None:
        for name, pid in pids.items():
            recorders.append(
                await asyncio.create_subprocess_exec(
                    perf, "record", "-q", "-F", "499", "-p", str(pid),
                    "-o", str(profile_dir / f"{name}.perf.data"),
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
                )
            )  # fmt: skip
    control = control_file(profile_dir)
    control.touch()
    try:
        yield
    finally:
        control.unlink(missing_ok=True)
        for rec in recorders:
            rec.send_signal(signal.SIGINT)
        for rec in recorders:
            if await rec.wait() not in (0, -signal.SIGINT):
                log.warning("perf record exited with %s", rec.returncode)
        await asyncio.sleep(0.5)  # the samplers notice within 50 ms and write their files
