"""The top-level folders import only as ``edgestream.<name>``: from a checkout, ``import pipeline`` would
otherwise work too and make a second copy of every class (``pipeline.errors.ContractError`` would not be
``edgestream.pipeline.errors.ContractError``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The checkout, where ``pipeline/``, ``topics/`` and ``workers/`` are importable as top-level names."""


@pytest.mark.parametrize("name", ["pipeline", "topics", "workers"])
def test_a_top_level_folder_refuses_its_short_name(name: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", f"import {name}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode != 0
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"ImportError: import this package as edgestream.{name}, not as {name}:")


def test_the_edgestream_names_import() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import edgestream.pipeline, edgestream.topics, edgestream.workers"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
