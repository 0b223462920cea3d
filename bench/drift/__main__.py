"""``python -m bench.drift``: false alarms and detections of the calibrated drift detector in a repeated
simulation, into ``bench/results/drift.json`` and ``drift.png`` (under a minute on 2 cores)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from bench.drift.simulate import FIXED_THRESHOLD, SHIFT, SIZES, SPLITS, WINDOWS, Rates, measure
from edgestream.pipeline.learning.calibration import FALSE_POSITIVE_RATE
from edgestream.pipeline.models import load_dataset

RESULTS = Path(__file__).resolve().parents[1] / "results"
"""Where the JSON and the plot go by default."""
SCENARIOS: Final = ("held-out", "random-splits", "retrained", SHIFT)
"""Every scenario of ``simulate``, the detection one last."""
CONTINUOUS: Final = ("held-out", "retrained", SHIFT)
"""Scenarios also judged as if devices drew from a continuous population (the pool's noise ignored)."""
SEED: Final = 15
"""Seed of the simulation's generator."""


def run(sizes: Sequence[int], windows: int, seed: int, splits: int) -> dict[str, Any]:
    """Every scenario at every size with the pool's own noise allowed for (the demo's setting); some
    also without (as if from a continuous population), to show what that term is for."""
    pool = len(load_dataset("embedding").y_test)
    rng = np.random.default_rng(seed)
    results: list[dict[str, Any]] = []
    started = time.perf_counter()
    for source_rows in (pool, None):
        for scenario in SCENARIOS if source_rows else CONTINUOUS:
            for n in sizes:
                rates = measure(scenario, n, windows, rng, source_rows=source_rows, splits=splits)
                results.append({"source_rows": source_rows, **_row(rates)})
    return {
        "target_false_positive_rate": FALSE_POSITIVE_RATE,
        "fixed_threshold": FIXED_THRESHOLD,
        "windows": windows,
        "sizes": list(sizes),
        "seed": seed,
        "splits": splits,
        "demo_source_rows": pool,
        "elapsed_s": round(time.perf_counter() - started, 1),
        "results": results,
    }


def _row(rates: Rates) -> dict[str, Any]:
    return {
        "scenario": rates.scenario,
        "n": rates.n,
        "windows": rates.windows,
        "flagged": rates.flagged,
        "rate": rates.rate,
        "flagged_fixed": rates.flagged_fixed,
        "rate_fixed": rates.rate_fixed,
        "median_max_psi": round(rates.median_max_psi, 4),
        "median_threshold": round(rates.median_threshold, 4),
    }


def plot(document: dict[str, Any], path: Path) -> None:
    """Share of windows flagged per scenario and size: calibrated (both pool settings) and fixed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SCENARIOS), figsize=(4 * len(SCENARIOS), 3.6), sharey=True)
    sizes = document["sizes"]
    x = np.arange(len(sizes))
    for ax, scenario in zip(axes, SCENARIOS, strict=True):
        rows = [r for r in document["results"] if r["scenario"] == scenario]
        bars = [
            ("calibrated, pool allowed for", [r["rate"] for r in rows if r["source_rows"] is not None]),
            (
                "calibrated, continuous",
                [r["rate"] for r in rows if r["source_rows"] is None] or [0.0] * len(x),
            ),
            (f"fixed {document['fixed_threshold']:g}", [r["rate_fixed"] for r in rows if r["source_rows"]]),
        ]
        for i, (label, values) in enumerate(bars):
            ax.bar(x + (i - 1) * 0.27, values, width=0.27, label=label)
        if scenario != SHIFT:
            ax.axhline(document["target_false_positive_rate"], color="red", ls="--", lw=1, label="target")
        ax.set_xticks(x, [str(n) for n in sizes])
        ax.set_xlabel("samples in the window")
        ax.set_title(f"{scenario}: {'detected' if scenario == SHIFT else 'false alarms'}")
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel("share of windows flagged")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Simulate, write the JSON and the plot, print a line per scenario and size."""
    parser = argparse.ArgumentParser(prog="python -m bench.drift", description=__doc__)
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where drift.json and drift.png go")
    parser.add_argument("--windows", type=int, default=WINDOWS, help="windows per scenario and size")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="window sample counts")
    parser.add_argument("--splits", type=int, default=SPLITS, help="fresh splits of random-splits")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    document = run(args.sizes, args.windows, args.seed, args.splits)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "drift.json").write_text(json.dumps(document, indent=2) + "\n")
    plot(document, args.out_dir / "drift.png")
    for r in document["results"]:
        pool = "continuous" if r["source_rows"] is None else f"pool {r['source_rows']}"
        print(
            f"{r['scenario']:>13} n={r['n']:<4} {pool:>10}: flagged {r['rate']:6.1%} "
            f"(fixed {FIXED_THRESHOLD:g}: {r['rate_fixed']:6.1%}), median max PSI {r['median_max_psi']:.3f}, "
            f"median threshold {r['median_threshold']:.3f}"
        )
    print(f"{document['elapsed_s']} s; wrote {args.out_dir / 'drift.json'} and drift.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
