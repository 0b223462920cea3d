"""``python -m bench.gateway``: sessions on one gateway, memory per session, the gateway's CPU per
envelope and per reply, and 1,000 injected disconnects, into ``bench/results/gateway.json`` and
``gateway.png``. ``plot`` redraws the PNG; ``serve`` and ``devices`` are the bench's own processes."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import signal
import sys
from pathlib import Path
from typing import Any, Final

RESULTS: Final = Path(__file__).resolve().parents[1] / "results"
"""Where the JSON and the plot go by default."""


def _serve(settings_file: str) -> None:
    """The gateway process: run until SIGTERM, print its port once listening."""
    from edgestream.pipeline import eventloop
    from edgestream.workers.gateway.server import Gateway
    from edgestream.workers.gateway.settings import GatewaySettings

    settings = GatewaySettings.model_validate_json(Path(settings_file).read_text())

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, gc.freeze)  # --gc-freeze: once every session is up
        async with Gateway(settings) as gateway:
            print(json.dumps({"port": gateway.port, "health_port": gateway.health_port}), flush=True)
            await stop.wait()

    with asyncio.Runner(loop_factory=eventloop.new_uvloop) as runner:
        runner.run(main())


def _devices(url: str, ca_file: str, region: str, count: int) -> None:
    from bench.gateway.devices import serve_commands
    from edgestream.device.transport import RegionEndpoint
    from edgestream.pipeline import eventloop

    endpoint = RegionEndpoint(region, url, 0.0, 0.0, ca_file)
    with asyncio.Runner(loop_factory=eventloop.new_uvloop) as runner:
        runner.run(serve_commands(endpoint, count))


def plot(result: dict[str, Any], out: Path) -> None:
    """Two panels: memory per session and CPU per operation; the counts in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (mem, cpu) = plt.subplots(1, 2, figsize=(10, 4))
    m = result["memory"]
    mem.bar(
        ["idle", "connected", "end"],
        [m["gateway_rss_idle_mib"], m["gateway_rss_connected_mib"], m["gateway_rss_end_mib"]],
    )
    mem.set_ylabel("gateway RSS (MiB)")
    mem.set_title(
        f"{result['sessions']['connected']:,} sessions: {m['bytes_per_session'] / 1024:.1f} KiB each"
    )
    c = result["cpu"]
    cpu.bar(["connect", "envelope", "reply"], [c["connect_ms_per_session"], c["envelope_ms"], c["reply_ms"]])
    cpu.set_ylabel("gateway CPU (ms per operation)")
    rc = result["reconnect"]
    cpu.set_title(
        f"{rc['disconnects']} disconnects: {rc['lost']} lost, {rc['duplicated_after_dedupe']} duplicated"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__)
    parser.add_argument("command", nargs="?", default="run", choices=["run", "plot", "serve", "devices"])
    parser.add_argument("args", nargs="*")
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--disconnects", type=int, default=1_000)
    parser.add_argument("--replies", type=int, default=3_000, help="replies during the disconnects")
    parser.add_argument("--pace-s", type=float, default=0.02, help="seconds between those replies")
    parser.add_argument("--linger-ms", type=int, default=0, help="the gateway producer's linger")
    parser.add_argument("--gc-freeze", action="store_true", help="gc.freeze() the gateway once connected")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    ns = parser.parse_args(argv)
    if ns.command == "serve":
        _serve(ns.args[0])
        return
    if ns.command == "devices":
        _devices(ns.args[0], ns.args[1], ns.args[2], int(ns.args[3]))
        return
    out = ns.out_dir / "gateway.json"
    if ns.command == "run":
        from bench.gateway.run import measure

        result = measure(
            ns.sessions, ns.disconnects, ns.replies, ns.pace_s, ns.linger_ms, gc_freeze=ns.gc_freeze
        )
        ns.out_dir.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        json.dump(result, sys.stdout, indent=1)
        print()
    else:
        result = json.loads(out.read_text())
    plot(result, ns.out_dir / "gateway.png")


if __name__ == "__main__":
    main()
