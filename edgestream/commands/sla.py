"""``edgestream sla ...``: the SLOs' Prometheus rules and Grafana dashboard, and the SLA report.

``generate`` writes ``deploy/prometheus`` and ``deploy/grafana`` from ``pipeline/observability/slo.py``
(``--check`` only says whether the committed files differ); ``report`` reads device round trips (OTLP
JSON lines of device spans, or the demo's request log) and prints, per region and model version, the
round-trip percentiles, availability, error budget left and version drift, with a JSON and a PNG copy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final

import typer
from rich.console import Console
from rich.table import Table

from edgestream.commands.common import fail
from edgestream.pipeline.errors import EdgestreamError

if TYPE_CHECKING:
    from edgestream.pipeline.observability.sla import SlaReport

app = typer.Typer(
    help="SLO rules and dashboard for Prometheus and Grafana; the SLA report.", no_args_is_help=True
)

DEMO_REQUESTS: Final = Path(".edgestream/demo/requests.jsonl")
"""The demo's request log: what ``report`` reads when given no input."""


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report_table(report: SlaReport) -> Table:
    """The report as a table: an ``all`` row per region and model, then its versions."""
    table = Table(
        title=f"SLA: round trips within {report.latency_threshold_ms:g} ms for {report.latency_target:.0%}, "
        f"{report.availability_target:.1%} answered",
        title_justify="left",
    )
    for col in ("region", "model", "version", "sent", "answered", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(col, justify="left" if col in ("region", "model", "version") else "right")
    for col in (
        "availability",
        "avail. budget left",
        f"<= {report.latency_threshold_ms:g} ms",
        "lat. budget left",
    ):
        table.add_column(col, justify="right")
    table.add_column("versions at once", justify="right")
    for r in report.rows:
        table.add_row(
            r.region,
            r.model,
            r.version,
            str(r.sent),
            str(r.answered),
            _fmt(r.p50_ms, ".1f"),
            _fmt(r.p95_ms, ".1f"),
            _fmt(r.p99_ms, ".1f"),
            _fmt(r.availability, ".3%"),
            _fmt(r.availability_budget_left, ".0%"),
            _fmt(r.latency_sli, ".2%"),
            _fmt(r.latency_budget_left, ".0%"),
            f"{r.max_concurrent_versions}" + (" drift" if r.drift else ""),
            style="bold" if r.version == "all" else None,
        )
    return table


def write_report(inputs: list[Path], json_path: Path, png_path: Path) -> SlaReport:
    """Read ``inputs``, write the report's JSON and PNG, return it."""
    from edgestream.pipeline.observability.sla import read_round_trips, sla_report
    from edgestream.pipeline.observability.sla_plot import plot_sla

    trips, skipped = read_round_trips(inputs)
    report = sla_report(trips, skipped)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    plot_sla(report, trips, png_path)
    return report


def print_report(console: Console, inputs: list[Path], json_path: Path, png_path: Path) -> None:
    """Write the report and print it, with where its copies are (the demo calls this at its end)."""
    report = write_report(inputs, json_path, png_path)
    console.print(report_table(report))
    if report.skipped_lines:
        console.print(f"skipped {report.skipped_lines} malformed input lines")
    console.print(f"SLA report: {json_path}, {png_path}")


@app.command("report")
def report(
    inputs: Annotated[
        list[Path] | None,
        typer.Argument(help=f"OTLP JSON-lines trace files or request logs (default {DEMO_REQUESTS})."),
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="JSON copy (default: sla.json beside the first input).")
    ] = None,
    png_path: Annotated[
        Path | None, typer.Option("--png", help="PNG (default: sla.png beside the first input).")
    ] = None,
) -> None:
    """Per region and model version: p50/p95/p99 round trip, availability, error budget left, drift."""
    paths = inputs or [DEMO_REQUESTS]
    where = paths[0].parent
    try:
        print_report(Console(), paths, json_path or where / "sla.json", png_path or where / "sla.png")
    except EdgestreamError as err:
        fail(str(err))


@app.command("generate")
def generate(
    root: Annotated[Path, typer.Option(help="The checkout whose deploy/ is written.")] = Path("."),
    check: Annotated[bool, typer.Option("--check", help="Write nothing; exit 1 if a file differs.")] = False,
) -> None:
    """Write deploy/prometheus (scrape config, recording and alert rules) and deploy/grafana."""
    from edgestream.pipeline.observability.generated import stale, write

    if check:
        differ = stale(root)
        if differ:
            fail("out of date (run `edgestream sla generate`): " + ", ".join(map(str, differ)))
        typer.echo("deploy/prometheus and deploy/grafana are up to date")
        return
    changed = write(root)
    typer.echo("\n".join(f"wrote {p}" for p in changed) or "nothing changed")
