"""Benchmarks: each module runs as ``python -m bench.<name>`` and writes ``bench/results/<name>.*``."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The checkout: child processes run from here so ``python -m bench...`` and ``python -m edgestream``
resolve."""
RESULTS_DIR = REPO_ROOT / "bench" / "results"
"""Where every bench writes its JSON and plots."""
