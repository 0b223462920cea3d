"""``python -m bench.pipeline [bench|echo|plot]``."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.logging import RichHandler

from bench.pipeline.echo import EchoSettings, run_echo_process
from bench.pipeline.plot import plot
from bench.pipeline.report import (
    breakdown_table,
    capacity_table,
    cpu_table,
    floor_table,
    fmt,
    summary_table,
    throughput_table,
)
from bench.pipeline.run import run_bench
from bench.pipeline.settings import BenchSettings
from edgestream.pipeline import heap


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.pipeline [bench|echo]``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.pipeline",
        description="The pipeline's latency and throughput beside a Kafka-only echo and bare onnxruntime.",
        epilog="Settings come from EDGESTREAM_BENCH_* (e.g. EDGESTREAM_BENCH_LOADS_PER_S='[100,300]').",
    )
    parser.add_argument(
        "mode",
        nargs="?",
        choices=("bench", "echo", "peer", "plot"),
        default="bench",
        help="bench (default) runs everything; plot redraws pipeline.png from pipeline.json; "
        "echo and peer are far-side processes the bench starts (the echo floor; the Quix Streams peer)",
    )
    args = parser.parse_args(argv)
    if args.mode == "echo":
        logging.basicConfig(level=logging.WARNING)
        run_echo_process(EchoSettings())
        return 0
    if args.mode == "peer":
        from bench.peers.quix import run_peer_process  # quixstreams is loaded only where it runs
        from bench.peers.settings import PeerSettings

        run_peer_process(PeerSettings())  # type: ignore[call-arg]  # required fields come from the env
        return 0
    if args.mode == "plot":
        out_dir = BenchSettings().out_dir
        plot(json.loads((out_dir / "pipeline.json").read_text()), out_dir / "pipeline.png")
        return 0
    console = Console() if sys.stdout.isatty() else Console(width=120)
    logging.basicConfig(level=logging.WARNING, handlers=[RichHandler(console=console)], format="%(message)s")
    settings = BenchSettings()
    if settings.freeze_heaps:
        heap.enable()  # each fleet freezes what the bench holds before it sends (Fleet.run)
    # SIGTERM unwinds like Ctrl-C, so the workers, the echo and the broker are stopped on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        result = run_bench(settings, console)
    except KeyboardInterrupt:
        console.print("interrupted: the processes this run started are stopped, nothing was written")
        return 130
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    json_path = settings.out_dir / "pipeline.json"
    png_path = settings.out_dir / "pipeline.png"
    document = result.to_json(settings)
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    plot(document, png_path)
    console.print(summary_table(result.levels, settings.systems))
    console.print(throughput_table(result.levels, settings.systems))
    console.print(cpu_table(result.levels, settings.systems, result.idle_cpu_share()))
    console.print(breakdown_table(result.levels))
    console.print(floor_table(result.floor, settings.floor_batch_sizes))
    if result.capacity:
        console.print(capacity_table(result.capacity))
    tracing = document["tracing"]
    if tracing is not None:
        cpu = tracing["worker_cpu_ms_per_request"]
        console.print(
            f"tracing on ({tracing['sample_ratio']:g} sampled, file exporter): sustained items/s x"
            f"{fmt(tracing['items_per_s_ratio'], '.3f')} of tracing off; worker CPU per request x "
            + ", ".join(f"{fmt(v['ratio'], '.2f')} at {load}/s" for load, v in cpu.items())
        )
    sustained = document["ratios"]["sustained_vs_echo_alo"]
    console.print(
        f"the pipeline sustains {fmt(sustained, '.2f')}x the non-transactional echo's items/s; "
        f"wall time {result.wall_s:.0f} s; wrote {json_path} and {png_path}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
