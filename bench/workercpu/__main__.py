"""``python -m bench.workercpu``: µs of CPU per record of the edge worker's own per-record work, stage by
stage, for the code of a base commit ("before") and of this checkout ("after"), side by side in one run.

No broker: ``measure.py`` feeds sealed envelopes, made as the fleet makes them, through what the worker
calls per unit (admission, batching, the replay and rate checks, inference of the zoo model, the unit's
outputs with their fast replies sealed, the commit's accounting), and times each piece alone too
(decode, open, tensor; result record, reply sealing, audit record) and the fleet's two per-request
steps (seal an envelope, open a reply). What it does not see: aiokafka's fetch and produce, TLS, the
event loop's own work, the commit stage; the pipeline bench (``bench/pipeline``) measures the whole
process from ``/proc``.

The base is exported with ``git archive`` into a temporary directory; each side runs in its own
process (``measure.py``, that tree first on ``sys.path``), alternately ``--pairs`` times (ABBA order,
so a slow spell of the shared box falls on both), and each stage's median over the pairs is reported.
CPU is process time: what other processes do on the box is not counted. Writes
``bench/results/workercpu.json`` and ``workercpu.png``; about a minute. ``--base HEAD`` compares the
checkout's committed code with its working tree.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Final

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench import REPO_ROOT, RESULTS_DIR

MEASURE: Final = Path(__file__).resolve().parent / "measure.py"
STAGES: Final = ("admit", "batch", "check", "infer", "outputs", "account")
"""The per-unit path in order; ``total`` is their sum."""


def _export(ref: str, into: Path) -> str:
    """The tree of ``ref`` under ``into``; returns the commit it names."""
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=REPO_ROOT, check=True,
        capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    archive = into / "tree.tar"
    subprocess.run(["git", "archive", "--output", str(archive), commit], cwd=REPO_ROOT, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="tar")
    return commit


def _measure(tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One process measuring ``tree``'s code."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    argv = [str(args.home), args.size, str(args.records), str(args.unit), str(args.rounds), str(args.seed)]
    done = subprocess.run(
        [sys.executable, str(MEASURE), *argv], cwd=tree, env=env, check=True, capture_output=True, text=True
    )
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def _medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the runs of one side."""
    out: dict[str, Any] = {}
    for group in ("stages_us", "components_us", "fleet_us"):
        keys = runs[0][group].keys()
        out[group] = {k: round(statistics.median(r[group][k] for r in runs), 2) for k in keys}
    out["answered"] = runs[0]["answered"]
    out["dead_letter_reasons"] = runs[0]["dead_letter_reasons"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.workercpu", description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="main", help="the commit measured as 'before' (default: main)")
    parser.add_argument("--records", type=int, default=2000, help="records per round")
    parser.add_argument("--unit", type=int, default=16, help="records per unit")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per process (median kept)")
    parser.add_argument("--pairs", type=int, default=3, help="processes per side, alternating")
    parser.add_argument("--size", default="medium", choices=("tiny", "medium"), help="model size served")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--home", type=Path, default=Path(tempfile.gettempdir()) / "edgestream-workercpu",
        help="where the zoo models are built once and reused",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    args.home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="workercpu-base-") as tmp:
        base_commit = _export(args.base, Path(tmp))
        sides = {"before": Path(tmp) / "tree", "after": REPO_ROOT}
        runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
        for pair in range(args.pairs):
            order = ("before", "after") if pair % 2 == 0 else ("after", "before")
            for side in order:
                runs[side].append(_measure(sides[side], args))
                total = runs[side][-1]["stages_us"]["total"]
                print(f"pair {pair + 1}/{args.pairs} {side:>6}: {total:7.1f} µs per record", flush=True)
    result = {k: _medians(v) for k, v in runs.items()}
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    document = {
        "config": {
            "records_per_round": args.records, "unit": args.unit, "rounds": args.rounds,
            "pairs": args.pairs, "model_size": args.size, "devices": 60, "frame_fraction": 0.5,
        },
        "before": {"commit": base_commit, **result["before"]},
        "after": {"commit": head, "working_tree": True, **result["after"]},
    }  # fmt: skip
    totals = result["before"]["stages_us"]["total"], result["after"]["stages_us"]["total"]
    document["ratio_total"] = round(totals[0] / totals[1], 2)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "workercpu.json").write_text(json.dumps(document, indent=2) + "\n")
    _plot(document, args.out / "workercpu.png")
    for group in ("stages_us", "components_us", "fleet_us"):
        for key, before in result["before"][group].items():
            after = result["after"][group][key]
            print(f"{group:>13} {key:<24} before {before:8.2f}  after {after:8.2f} µs")


def _plot(document: dict[str, Any], path: Path) -> None:
    """Before and after, per stage of the worker's path, per piece, and the fleet's two steps."""
    groups = [("stages_us", "worker, per stage"), ("components_us", "pieces (timed alone)"),
              ("fleet_us", "fleet, per request")]  # fmt: skip
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8), gridspec_kw={"width_ratios": [7, 6, 2]})
    for ax, (group, title) in zip(axes, groups, strict=True):
        keys = list(document["before"][group])
        xs = range(len(keys))
        ax.bar([x - 0.2 for x in xs], [document["before"][group][k] for k in keys], 0.4, label="before")
        ax.bar([x + 0.2 for x in xs], [document["after"][group][k] for k in keys], 0.4, label="after")
        ax.set_xticks(list(xs), [k.split(".")[-1] for k in keys], rotation=30, ha="right")
        ax.set_ylabel("CPU µs per record")
        ax.set_title(title)
    axes[0].legend()
    config = document["config"]
    fig.suptitle(
        f"Edge worker CPU per record, in process ({config['model_size']} models, units of {config['unit']})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
