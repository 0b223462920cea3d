"""``python -m bench.flood [run|plot|flooder <config>]``: ``run`` (the default) measures every phase and
writes ``flood.json``, ``flood.png`` and (with recovery phases) ``flood-recovery.png``; ``plot`` redraws
the PNGs from the JSON; ``flooder`` is the
flooding device's process, which the bench starts."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.flood",
        description="One flooding Kafka-native device against its own region and another, without and "
        "with a client quota on the regions' device principals.",
        epilog="Settings come from EDGESTREAM_FLOOD_* (e.g. EDGESTREAM_FLOOD_DURATION_S=10).",
    )
    parser.add_argument("mode", nargs="?", choices=("run", "plot", "flooder"), default="run")
    parser.add_argument("config", nargs="?", type=Path, help="the flooder's config file (flooder only)")
    args = parser.parse_args(argv)
    if args.mode == "flooder":
        from bench.flood.flooder import run_flooder

        logging.basicConfig(level=logging.WARNING)
        if args.config is None:
            parser.error("flooder needs its config file")
        run_flooder(args.config)
        return 0

    from rich.console import Console
    from rich.logging import RichHandler

    from bench.flood.plot import plot, plot_recovery
    from bench.flood.report import recovery_table, table
    from bench.flood.settings import FloodSettings

    settings = FloodSettings()
    json_path, png_path = settings.out_dir / "flood.json", settings.out_dir / "flood.png"
    recovery_png = settings.out_dir / "flood-recovery.png"
    if args.mode == "plot":
        document = json.loads(json_path.read_text())
        plot(document, png_path)
        plot_recovery(document, recovery_png)
        return 0
    from bench.flood.run import run_bench

    console = Console(log_path=False) if sys.stdout.isatty() else Console(width=140, log_path=False)
    logging.basicConfig(level=logging.WARNING, handlers=[RichHandler(console=console)], format="%(message)s")
    # SIGTERM unwinds like Ctrl-C, so the workers, the flooder and the broker are stopped on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        document = run_bench(settings, console)
    except KeyboardInterrupt:
        console.print("interrupted: the processes this run started are stopped, nothing was written")
        return 130
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(rounded(document), indent=2) + "\n")
    plot(document, png_path)
    wrote = [json_path, png_path]
    if plot_recovery(document, recovery_png):
        wrote.append(recovery_png)
    console.print(table(document))
    recovery = recovery_table(document)
    if recovery is not None:
        console.print(recovery)
    console.print(f"wall time {document['wall_s']:.0f} s; wrote {', '.join(map(str, wrote))}")
    return 0


def rounded(value: object) -> object:
    """Floats to 4 decimals, all the way down."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(v) for v in value]
    return value


if __name__ == "__main__":
    raise SystemExit(main())
