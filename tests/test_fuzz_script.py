"""``make fuzz`` (``tests/fuzz.sh``): property tests run again under other seeds; it says which seed
found a failing case and how to replay it, and fails then."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "fuzz.sh"

# Imported as ``import hypothesis``: ``fuzz.sh`` finds the suite's property modules by a line
# ``from hypothesis``, which these sources, and so this module, must not hold.
PASSING = """
import hypothesis
import hypothesis.strategies as st

@hypothesis.given(st.integers())
def test_holds(x: int) -> None:
    assert x + 0 == x
"""

FAILING = """
import hypothesis
import hypothesis.strategies as st

@hypothesis.given(st.integers(min_value=0, max_value=10))
def test_breaks(x: int) -> None:
    assert x < 5
"""


def _fuzz(tmp_path: Path, source: str, seeds: int) -> subprocess.CompletedProcess[str]:
    module = tmp_path / "test_property.py"
    module.write_text(source)
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "SEEDS": str(seeds),
        "FIRST_SEED": "7",
        "FUZZ_MODULES": str(module),
    }
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, check=False)


def test_every_seed_runs_and_a_clean_run_says_so(tmp_path: Path) -> None:
    proc = _fuzz(tmp_path, PASSING, seeds=2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "seed 7 (1/2) passed" in proc.stdout
    assert "seed 8 (2/2) passed" in proc.stdout
    assert "2 seeds, no failing case" in proc.stdout


def test_a_failing_case_stops_it_with_the_seed_and_the_test_to_replay(tmp_path: Path) -> None:
    proc = _fuzz(tmp_path, FAILING, seeds=3)
    assert proc.returncode == 1
    assert "seed 7 (1/3) found a failing case" in proc.stdout
    assert "--hypothesis-seed=7" in proc.stdout
    assert "test_property.py::test_breaks" in proc.stdout
    assert "seed 8" not in proc.stdout  # it stopped at the first
