"""``python -m bench.gpu``: bare onnxruntime on the GPU, and the worker's per-unit path beside it at the
same batch sizes, into ``bench/results/gpu.json``, ``gpu.png`` and ``gpu-pipeline.png``."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.gpu.measure import BATCH_SIZES, BUDGET_S, gpu_block, gpu_targets
from bench.gpu.pipeline import compare
from edgestream.pipeline.serving.inference import available_providers
from edgestream.pipeline.settings import DEFAULT_HOME

RESULTS = Path(__file__).resolve().parents[1] / "results"
"""Where the JSON and the plot go by default."""


def plot(document: dict[str, Any], path: Path) -> None:
    """Items/s (top) and p99 ms of a batch (bottom) vs batch size, per model; a line per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = document["models"]
    fig, axes = plt.subplots(2, len(models), figsize=(5 * len(models), 7), squeeze=False)
    for column, (name, model) in enumerate(models.items()):
        rate, p99 = axes[0][column], axes[1][column]
        for target, result in model["targets"].items():
            if not result["points"]:
                continue
            sizes = [p["batch"] for p in result["points"]]
            rate.plot(sizes, [p["items_per_s"] for p in result["points"]], marker="o", label=target)
            p99.plot(sizes, [p["p99_ms"] for p in result["points"]], marker="o", label=target)
        rate.set_title(name)
        for ax, unit in ((rate, "items/s"), (p99, "p99 of one batch, ms")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("batch size")
            ax.set_ylabel(unit)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
    fig.suptitle(f"Bare onnxruntime {document['onnxruntime']} on {document['device']}, IO binding")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_pipeline(document: dict[str, Any], path: Path) -> None:
    """Items/s of bare onnxruntime and of the worker's path (top), and their ratio (bottom), per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = document["pipeline_vs_bare"]
    fig, axes = plt.subplots(2, len(models), figsize=(5 * len(models), 7), squeeze=False)
    for column, (name, model) in enumerate(models.items()):
        rate, ratio = axes[0][column], axes[1][column]
        sizes = [p["batch"] for p in model["points"]]
        rate.plot(
            sizes, [p["bare"]["items_per_s"] for p in model["points"]], marker="o", label="bare onnxruntime"
        )
        rate.plot(
            sizes, [p["pipeline"]["items_per_s"] for p in model["points"]], marker="o", label="worker path"
        )
        ratio.plot(sizes, [p["ratio"] for p in model["points"]], marker="o", color="C2", label="1 worker")
        counts = sorted({s["processes"] for p in model["points"] for s in p.get("shared", [])})
        for colour, n in enumerate(counts, start=3):
            shared = [
                (p["batch"], s) for p in model["points"] for s in p.get("shared", []) if s["processes"] == n
            ]
            xs = [b for b, _ in shared]
            rate.plot(xs, [s["items_per_s"] for _, s in shared], marker="s", color=f"C{colour}",
                      label=f"{n} workers sharing the GPU")  # fmt: skip
            ratio.plot(
                xs, [s["ratio"] for _, s in shared], marker="s", color=f"C{colour}", label=f"{n} workers"
            )
        ratio.axhline(0.8, linestyle="--", color="grey", label="0.8")
        rate.set_title(name)
        rate.set_yscale("log")
        rate.set_ylabel("items/s")
        ratio.set_ylabel("worker path / bare")
        for ax in (rate, ratio):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("batch size")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
    fig.suptitle(f"The worker's per-unit path vs bare onnxruntime, CUDA, on {document['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and write, or say why not (no CUDA: exit 0, nothing written)."""
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__)
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where gpu.json and gpu.png go")
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME, help="model cache and TensorRT engines")
    parser.add_argument("--model-size", default="medium", choices=("tiny", "medium", "full"))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="timed seconds per point")
    parser.add_argument(
        "--no-pipeline", action="store_true", help="bare onnxruntime only, not the worker's path beside it"
    )
    parser.add_argument(
        "--processes",
        type=int,
        nargs="*",
        default=[2, 4],
        help="also this many worker processes sharing the GPU at once (the ResNet-shaped model)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    document = gpu_block(
        args.home, model_size=args.model_size, batch_sizes=args.batch_sizes, budget_s=args.budget_s
    )
    if document is None:
        print(
            "bench.gpu: this onnxruntime has no CUDAExecutionProvider (it offers "
            f"{', '.join(available_providers())}); on an NVIDIA GPU install edgestream[gpu] without the "
            "CPU wheel. Nothing was written."
        )
        return 0
    if not args.no_pipeline:
        cuda = gpu_targets(args.home, max(args.batch_sizes))["cuda"]
        document["pipeline_vs_bare"] = compare(
            args.home,
            cuda,
            model_size=args.model_size,
            batch_sizes=args.batch_sizes,
            budget_s=args.budget_s,
            processes=args.processes,
        )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "gpu.json").write_text(json.dumps(document, indent=2) + "\n")
    plot(document, args.out_dir / "gpu.png")
    if "pipeline_vs_bare" in document:
        plot_pipeline(document, args.out_dir / "gpu-pipeline.png")
        for name, model in document["pipeline_vs_bare"].items():
            rows = ", ".join(
                f"{p['batch']}: {p['pipeline']['items_per_s']:,.0f} vs {p['bare']['items_per_s']:,.0f}/s "
                f"({p['ratio']:.2f}x)"
                for p in model["points"]
            )
            print(f"worker path vs bare, {name}: {rows}")
            for point in model["points"]:
                for shared in point.get("shared", []):
                    print(
                        f"  {shared['processes']} workers sharing the GPU, batch {point['batch']}: "
                        f"{shared['items_per_s']:,.0f}/s ({shared['ratio']:.2f}x bare), "
                        f"p99 {shared['p99_ms']:.1f} ms"
                    )
    for name, model in document["models"].items():
        for target, result in model["targets"].items():
            rates = ", ".join(
                f"{p['batch']}: {p['items_per_s']:,.0f}/s p99 {p['p99_ms']:.2f} ms" for p in result["points"]
            )
            print(f"{name} {target}: {rates}")
    print(f"wrote {args.out_dir / 'gpu.json'} and gpu.png ({document['device']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
