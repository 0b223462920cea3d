"""The wheel works on its own: built from this tree and installed into a fresh virtual environment that
cannot see the checkout, its ``edgestream`` starts the local broker (pom and log4j2 config from the
package data), creates a region's topics and ACLs, and runs an edge worker until it is ready.

The new environment borrows the running interpreter's installed dependencies through a ``.pth`` file
instead of downloading them again. The wheel builds without build isolation when the installed
setuptools meets ``build-system.requires``; otherwise pip fetches setuptools from the index.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from edgestream.workers.local.processes import Child, ChildFailed

pytestmark = pytest.mark.broker

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The checkout the wheel is built from."""
REGION = "eu-west"
"""The one region the installed tools set up and serve."""
STEP_TIMEOUT_S = 180
"""Longest any one command may take (building, installing, starting the broker)."""
WORKER_READY_TIMEOUT_S = 90.0
"""Longest the installed worker may take to load its models and get its partitions."""

_SKIPPED_AT_TOP = frozenset({"tests", "bench", "docs", "build", "dist"})


def _run(command: list[str], *, cwd: Path) -> str:
    done = subprocess.run(
        command,
        cwd=cwd,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, (
        f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
    )
    return done.stdout


def _ignore(directory: str, names: list[str]) -> list[str]:
    """What the source copy leaves out: caches, and at the top the folders the wheel does not ship."""
    top = Path(directory) == REPO_ROOT
    return [
        name
        for name in names
        if name == "__pycache__"
        or name.endswith(".egg-info")
        or (top and (name.startswith(".") or name in _SKIPPED_AT_TOP))
    ]


def _local_setuptools_suffices() -> bool:
    """True when the installed setuptools meets the floor in ``build-system.requires``."""
    requires = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    floor = next(re.fullmatch(r"setuptools>=(\d+)", item) for item in requires)
    assert floor is not None, requires
    try:
        installed = metadata.version("setuptools")
    except metadata.PackageNotFoundError:
        return False
    return int(installed.split(".")[0]) >= int(floor[1])


def _build_wheel(tmp_path: Path) -> Path:
    """The wheel of a copy of this tree (the build leaves ``build/`` and egg-info in the copy only)."""
    source = tmp_path / "source"
    shutil.copytree(REPO_ROOT, source, symlinks=True, ignore=_ignore)
    offline = ["--no-build-isolation", "--no-index"] if _local_setuptools_suffices() else []
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", *offline, "-w", str(wheels), "."], cwd=source)
    (wheel,) = wheels.glob("edgestream-*.whl")
    return wheel


def _venv_with(wheel: Path, tmp_path: Path) -> Path:
    """A new environment holding the wheel; the running interpreter's site directories come after its
    own (a ``.pth`` file), so the dependencies are there but this checkout is not."""
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    _run([*pip, "install", "--no-deps", "--no-index", str(wheel)], cwd=tmp_path)
    site_dirs = [path for path in sys.path if Path(path).name in ("site-packages", "dist-packages")]
    own_site = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=tmp_path
    )
    (Path(own_site.strip()) / "borrowed-dependencies.pth").write_text("\n".join(site_dirs) + "\n")
    return venv


def _clean_env() -> dict[str, str]:
    """This process's environment without what would point the tools at the checkout or at the test
    session's broker; the jar cache setting stays, so the broker reuses the resolved jars."""
    return {
        key: value
        for key, value in os.environ.items()
        if key != "PYTHONPATH" and (not key.startswith("EDGESTREAM_") or key == "EDGESTREAM_BROKER_CACHE_DIR")
    }


def _run_worker_until_ready(edgestream: str, work: Path) -> None:
    """Run ``edgestream worker`` until it writes its ready file, then stop it with SIGTERM (exit 0)."""
    ready_file = work / "ready.json"
    worker_env = {
        **_clean_env(),
        "EDGESTREAM_WORKER_READY_FILE": str(ready_file),
        "EDGESTREAM_WORKER_MODEL_SIZE": "tiny",
    }
    worker = Child.start(
        "the installed worker",
        [edgestream, "worker", "--local", "--region", REGION],
        env=worker_env,
        log_file=work / "worker.log",
        cwd=work,
    )
    try:
        with contextlib.suppress(ChildFailed):
            worker.wait_ready(ready_file, WORKER_READY_TIMEOUT_S, poll_s=0.2)
        ready = ready_file.exists()
    finally:
        code = worker.stop(timeout_s=60)
    output = worker.log_file.read_text(errors="replace")
    assert ready, f"the installed worker was not ready (exit {code}):\n{output}"
    assert code == 0, output


def test_the_installed_wheel_runs_the_broker_and_a_worker_outside_the_checkout(tmp_path: Path) -> None:
    venv = _venv_with(_build_wheel(tmp_path), tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    edgestream = str(venv / "bin" / "edgestream")
    where = _run(
        [str(venv / "bin" / "python"), "-c", "import edgestream; print(edgestream.__file__)"],
        cwd=work,
    )
    assert Path(where.strip()).is_relative_to(venv), where

    _run([edgestream, "broker", "start", "--timeout-s", "120"], cwd=work)
    try:
        _run([edgestream, "topics", "create", "--region", REGION], cwd=work)
        _run([edgestream, "topics", "acl", "--region", REGION], cwd=work)
        _run([edgestream, "keys", "init", "--region", REGION], cwd=work)
        _run_worker_until_ready(edgestream, work)
    finally:
        _run([edgestream, "broker", "stop"], cwd=work)
    assert "Kafka Server started" in (work / ".edgestream" / "broker" / "logs" / "server.log").read_text()
