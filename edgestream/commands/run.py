"""Process commands: ``edgestream worker``, ``edgestream fleet``, ``edgestream demo``."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

if TYPE_CHECKING:
    from edgestream.workers.demo import DemoResult, RegionSummary
    from edgestream.workers.fleet import Progress as FleetProgress

console = Console()


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def worker(
    region: str | None = typer.Option(None, help="Region to serve (else EDGESTREAM_WORKER_REGION)."),
    bootstrap: str | None = typer.Option(
        None,
        help="Kafka bootstrap (else EDGESTREAM_WORKER_KAFKA__BOOTSTRAP_SERVERS, else the local broker).",
    ),
) -> None:
    """Run one edge worker until SIGTERM/SIGINT; it finishes its in-flight batch before exiting."""
    from edgestream.pipeline.certs import Identity
    from edgestream.pipeline.settings import KafkaSettings
    from edgestream.workers.broker import local_kafka
    from edgestream.workers.edge import WorkerSettings, serve

    overrides: dict[str, object] = {}
    if region is not None:
        overrides["region"] = region
    if bootstrap is not None:
        overrides["kafka"] = KafkaSettings(bootstrap_servers=bootstrap)
    settings = WorkerSettings(**overrides)  # type: ignore[arg-type]
    if bootstrap is None and not any(k.startswith("EDGESTREAM_WORKER_KAFKA__") for k in os.environ):
        local = local_kafka(Identity.edge(settings.region))  # the local broker, as edge-<region>
        if local is not None:
            settings = settings.model_copy(update={"kafka": local})

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    asyncio.run(main())


def fleet(
    duration_s: float | None = typer.Option(None, help="Seconds to send."),
    rate_per_s: float | None = typer.Option(None, help="Requests per second for the whole fleet."),
    bootstrap: str | None = typer.Option(None, help="Kafka bootstrap servers (else the local broker)."),
) -> None:
    """Run the simulated device fleet against running workers and print what it saw."""
    from edgestream.pipeline.settings import KafkaSettings
    from edgestream.workers.broker import local_kafka
    from edgestream.workers.fleet import FleetSettings, run_fleet

    overrides: dict[str, object] = {}
    if duration_s is not None:
        overrides["duration_s"] = duration_s
    if rate_per_s is not None:
        overrides["rate_per_s"] = rate_per_s
    kafka = KafkaSettings(bootstrap_servers=bootstrap) if bootstrap is not None else local_kafka()
    if kafka is not None:
        overrides["kafka"] = kafka  # over TLS each region's devices connect as device-<region>
    settings = FleetSettings(**overrides)  # type: ignore[arg-type]
    report = asyncio.run(run_fleet(settings))
    for name, r in report.regions.items():
        console.print(
            f"{name}: sent {r.sent}, results {r.results}, fallbacks {r.fallbacks}, "
            f"p99 {_fmt(r.percentile_ms(99))} ms, accuracy {_fmt(r.accuracy, '.3f')}"
        )


def _summary_table(result: DemoResult) -> Table:
    table = Table(title="edgestream demo: per region", title_justify="left")
    for col in (
        "region",
        "sent",
        "results",
        "dead letters",
        "fallbacks",
        "items/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "accuracy",
        "mean batch",
    ):
        table.add_column(col, justify="left" if col == "region" else "right")

    def row(r: RegionSummary, style: str | None = None) -> None:
        table.add_row(
            r.region,
            str(r.sent),
            str(r.results),
            f"{r.dead_letters} (of {r.bad_sent} bad)",
            str(r.fallbacks),
            _fmt(r.throughput_per_s),
            _fmt(r.p50_ms),
            _fmt(r.p95_ms),
            _fmt(r.p99_ms),
            _fmt(r.accuracy, ".3f"),
            _fmt(r.mean_batch),
            style=style,
        )

    for r in result.rows:
        row(r)
    row(result.total, style="bold")
    return table


def _cloud_table(result: DemoResult) -> Table:
    table = Table(title="the cloud aggregator's view (every window added up)", title_justify="left")
    for col in ("region", "model", "version", "results", "dead letters", "labelled", "accuracy", "max PSI"):
        table.add_column(col, justify="left" if col in ("region", "model") else "right")
    for row in result.cloud:
        table.add_row(
            row["region"],
            row["model"],
            str(row["version"]),
            str(row["results"]),
            str(row["dead_letters"]),
            str(row["labelled"]),
            _fmt(row["accuracy"], ".3f"),
            _fmt(row["max_psi"], ".3f") + (" drift" if row["drift_flagged"] else ""),
        )
    return table


def demo(
    duration_s: float | None = typer.Option(None, help="Seconds the fleet sends (default 40)."),
    rate_per_s: float | None = typer.Option(None, help="Requests per second, whole fleet (default 150)."),
) -> None:
    """Broker, topics, one edge worker per region, a simulated fleet; then a summary and a plot."""
    from edgestream.workers.demo import DemoSettings, run_demo

    quiet = logging.getLogger("edgestream")
    if not quiet.isEnabledFor(logging.DEBUG):  # workers log to files; keep this terminal for the display
        quiet.setLevel(logging.WARNING)
    overrides: dict[str, object] = {}
    if duration_s is not None:
        overrides["duration_s"] = duration_s
    if rate_per_s is not None:
        overrides["rate_per_s"] = rate_per_s
    settings = DemoSettings(**overrides)  # type: ignore[arg-type]

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("fleet", total=settings.duration_s, info="", visible=False)

        def on_step(msg: str) -> None:
            progress.console.print(f"[cyan]>[/] {msg}")

        def on_progress(p: FleetProgress) -> None:
            progress.update(
                task,
                visible=True,
                completed=min(p.elapsed_s, p.duration_s),
                info=f"sent {p.sent}  answered {p.answered}  fallbacks {p.fallbacks}  "
                f"p99 {_fmt(p.p99_ms)} ms",
            )

        result = run_demo(settings, on_step=on_step, on_progress=on_progress)

    console.print(_summary_table(result))
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(result.total.dead_letter_reasons.items())) or "none"
    console.print(f"dead letters by reason: {reasons}")
    console.print(
        f"late results (after the device fell back): {result.total.late}; "
        f"duplicate results: {result.total.duplicates}"
    )
    if result.cloud:
        console.print(_cloud_table(result))
    accuracy = ", ".join(f"{k} {v:.3f}" for k, v in sorted(result.model_accuracy.items()))
    console.print(f"held-out accuracy of the models served / fallback: {accuracy}")
    console.print(f"latency plot: {result.paths.plot}")
    console.print(f"summary JSON: {result.paths.summary}")
    broker_log = f", broker log {result.broker_log}" if result.broker_log else ""
    console.print(f"logs: worker logs in {result.paths.logs}{broker_log}")


def register(app: typer.Typer) -> None:
    """Mount the process commands on the root app."""
    app.command("worker")(worker)
    app.command("fleet")(fleet)
    app.command("demo")(demo)
