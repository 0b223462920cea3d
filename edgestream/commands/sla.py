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
from edgestream.pipeline.observability.sla import REQUEST_LOG
from edgestream.pipeline.settings import DEFAULT_HOME

if TYPE_CHECKING:
    from edgestream.pipeline.observability.sla import SlaReport

app = typer.Typer(
    help="SLO rules and dashboard for Prometheus and Grafana; the SLA report.", no_args_is_help=True
)

DEMO_DIR: Final = DEFAULT_HOME / "demo"
"""Where the demo writes its request log, and ``report`` its copies by default."""
DEMO_REQUESTS: Final = DEMO_DIR / REQUEST_LOG
"""The demo's request log: what ``report`` reads when given no input."""


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _share(value: float | None, budget: float | None, spec: str) -> str:
    if value is None:
        return "-"
    return format(value, spec) + ("" if budget is None else f" ({budget:.0%})")


def report_table(report: SlaReport) -> Table:
    """The report as a table: an ``all`` row per region and model, then its versions."""
    threshold = f"{report.latency_threshold_ms:g} ms"
    table = Table(
        title=f"SLA: {report.latency_target:.0%} of round trips within {threshold}, "
        f"{report.availability_target:.1%} answered in the deadline; (left): error budget left",
        title_justify="left",
    )
    for col in ("region", "model", "ver", "sent", "ok", "p50/p95/p99 ms"):
        table.add_column(col, justify="left" if col in ("region", "model", "ver") else "right")
    for col in ("answered (left)", f"<= {threshold} (left)", "at once"):
        table.add_column(col, justify="right")
    for r in report.rows:
        table.add_row(
            r.region,
            r.model,
            r.version,
            str(r.sent),
            str(r.answered),
            "/".join(_fmt(v, ".1f") for v in (r.p50_ms, r.p95_ms, r.p99_ms)),
            _share(r.availability, r.availability_budget_left, ".2%"),
            _share(r.latency_sli, r.latency_budget_left, ".2%"),
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


def print_demo_report(console: Console, demo_dir: Path) -> None:
    """The demo's SLA report, from its request log in ``demo_dir``, with its copies beside it."""
    print_report(console, [demo_dir / REQUEST_LOG], demo_dir / "sla.json", demo_dir / "sla.png")


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


@app.command("trace")
def trace(
    path: Annotated[Path, typer.Argument(help="An OTLP JSON-lines trace file (OTEL_TRACES_EXPORTER=file).")],
    trace_id: Annotated[
        str | None, typer.Option("--trace-id", help="The request's trace id (default: the slowest answered).")
    ] = None,
    median: Annotated[
        bool, typer.Option("--median", help="Show the median answered request instead of the slowest.")
    ] = False,
) -> None:
    """One request's trace as text: device -> unit (its link) -> the unit's stages."""
    from edgestream.pipeline.observability.otlpjson import read_spans
    from edgestream.pipeline.observability.tracetree import pick_request, request_tree

    if not path.is_file():
        fail(f"{path}: no such trace file (run with OTEL_TRACES_EXPORTER=file EDGESTREAM_TRACES_FILE={path})")
    spans = read_spans(path)
    device = pick_request(spans, trace_id, slowest=not median)
    if device is None:
        fail(f"{path}: no {'such ' if trace_id else 'answered '}request whose unit span is in the file")
    print(f"trace {device.get('traceId')}")
    for line in request_tree(spans, device):
        print(line)
