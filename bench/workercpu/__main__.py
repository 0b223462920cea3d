"""``python -m bench.workercpu``: µs of CPU per record of the edge worker's own per-record work, stage by
stage, for the code of a base commit ("before") and of this checkout ("after"), side by side in one run.

No broker: ``measure.py`` feeds sealed envelopes, made as the fleet makes them, through what the worker
calls per unit (admission, batching, the replay and rate checks, inference of the zoo model, the unit's
outputs with their fast replies sealed, the commit's accounting, and the commit stage's merge of 20
units' work into one commit's, ``measure.UNITS_PER_COMMIT``), and times pieces alone too (decode,
open, tensor; result record, reply sealing, audit record) and the fleet's per-request steps (seal an
envelope with the device key's bytes, or with its cipher kept; open a reply). What it does not see:
aiokafka's fetch and produce, TLS, the event loop's own work, the transaction itself; the pipeline bench
(``bench/pipeline``) measures the whole process from ``/proc``.

The base is exported with ``git archive`` into a temporary directory; each side runs in its own process
(``measure.py``, that tree first on ``sys.path``), both at once, and the two are asked for a round in
turn (ABBA order), ``--rounds`` times each: consecutive rounds of the two sides share the box's load of
the moment. Then both are replaced by fresh ones, ``--processes`` times: one process's memory layout
can make it a few percent slower than another running the same code, throughout. Reported per figure:
the median over the rounds, the least (``*_least``), and ``ratio_paired``, the median over consecutive
pairs of rounds of the before/after ratio: the figure to trust on a shared box (in an A/A run, both
sides the same code, under a load average of 3-9 on 2 cores, it was 1.005 while the two sides' least
totals differed by 27%; figures of code a change did not touch stay within about 4% of 1).

CPU is process time (the inference thread's included). Writes ``bench/results/workercpu.json`` and
``workercpu.png``; a few minutes. ``--base HEAD`` compares the committed code with the working tree.
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
STAGES: Final = ("admit", "batch", "check", "infer", "outputs", "account", "commit")
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


class _Side:
    """One measuring process (``measure.py``) of one tree, answering a command at a time."""

    def __init__(self, tree: Path, args: argparse.Namespace) -> None:
        argv = [str(args.home), args.size, str(args.records), str(args.unit), str(args.seed)]
        self._process = subprocess.Popen(
            [sys.executable, str(MEASURE), *argv], cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.ask("")  # its first line says it is ready

    def ask(self, command: str) -> dict[str, Any]:
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        if command:
            self._process.stdin.write(command + "\n")
            self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line:
            raise SystemExit(f"the measuring process of {command or 'setup'!r} ended (see its stderr)")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        self._process.wait(timeout=30)


def _interleaved(sides: dict[str, _Side], command: str, times: int) -> dict[str, list[dict[str, float]]]:
    """``command`` asked of each side in turn, ``times`` times (ABBA: a slow spell falls on both)."""
    out: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
    names = list(sides)
    for i in range(times):
        for name in names if i % 2 == 0 else reversed(names):
            out[name].append(sides[name].ask(command))
    return out


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the runs."""
    return {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}


def _paired(before: list[dict[str, float]], after: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's before/after ratio, the median over consecutive pairs of runs."""
    return {
        k: round(statistics.median(b[k] / a[k] for b, a in zip(before, after, strict=True) if a[k] > 0), 3)
        for k in before[0]
    }


def _measure(args: argparse.Namespace, trees: dict[str, Path]) -> dict[str, Any]:
    """Both sides' figures (medians, and the least of the rounds) and the paired before/after ratios."""
    commands = {
        "stages_us": ("round", args.rounds),
        "components_us": ("components", max(4, args.rounds // 4)),
        "fleet_us": ("fleet", max(4, args.rounds // 4)),
    }
    runs: dict[str, dict[str, list[dict[str, float]]]] = {group: {n: [] for n in trees} for group in commands}
    for _ in range(args.processes):  # fresh processes: one process's own layout biases no side throughout
        sides = {name: _Side(tree, args) for name, tree in trees.items()}
        try:
            for group, (command, times) in commands.items():
                for name, answers in _interleaved(sides, command, times).items():
                    runs[group][name].extend(answers)
            summary = {name: side.ask("summary") for name, side in sides.items()}
        finally:
            for side in sides.values():
                side.close()
    out: dict[str, Any] = {name: dict(summary[name]) for name in sides}
    for group, by_side in runs.items():
        for name in sides:
            out[name][group] = _median(by_side[name])
        out["before"][f"{group}_least"] = {
            k: round(min(r[k] for r in by_side["before"]), 2) for k in by_side["before"][0]
        }
        out["after"][f"{group}_least"] = {
            k: round(min(r[k] for r in by_side["after"]), 2) for k in by_side["after"][0]
        }
        out.setdefault("ratio_paired", {})[group] = _paired(by_side["before"], by_side["after"])
    # The fleet's change is how it calls seal (the same code on both sides): the two ways, in turn
    # in the same process, median of their ratios.
    fleet_runs = runs["fleet_us"]["after"]
    out["fleet_seal_key_bytes_over_kept_cipher"] = round(
        statistics.median(r["seal"] / r["seal_kept_cipher"] for r in fleet_runs), 3
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.workercpu", description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="main", help="the commit measured as 'before' (default: main)")
    parser.add_argument("--records", type=int, default=256, help="records per round")
    parser.add_argument(
        "--unit", type=int, default=6,
        help="records per unit (6: the pipeline bench's worker at 1,000 req/s: 10,302 records, 1,696 units)",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=40, help="rounds per side and process, interleaved")
    parser.add_argument("--processes", type=int, default=3, help="measuring processes per side, in turn")
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
        result = _measure(args, {"before": Path(tmp) / "tree", "after": REPO_ROOT})
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    document = {
        "config": {
            "records_per_round": args.records, "unit": args.unit, "rounds": args.rounds,
            "processes": args.processes,
            "model_size": args.size, "devices": 60, "frame_fraction": 0.5,
        },
        "before": {"commit": base_commit, **result["before"]},
        "after": {"commit": head, "working_tree": True, **result["after"]},
        "ratio_paired": result["ratio_paired"],
        "fleet_seal_key_bytes_over_kept_cipher": result["fleet_seal_key_bytes_over_kept_cipher"],
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "workercpu.json").write_text(json.dumps(document, indent=2) + "\n")
    _plot(document, args.out / "workercpu.png")
    for group in ("stages_us", "components_us", "fleet_us"):
        for key, before in result["before"][group].items():
            after = result["after"][group][key]
            ratio = result["ratio_paired"][group][key]
            print(f"{group:>13} {key:<24} before {before:8.2f}  after {after:8.2f} µs  (paired {ratio:.2f}x)")


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
