"""`edgestream aggregate ...`: run the cloud aggregator, and show its windows."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from edgestream.commands.common import fail, utc

if TYPE_CHECKING:
    from rich.table import Table

app = typer.Typer(
    help="The cloud aggregator: windows of the edge's summaries, label join, drift.", no_args_is_help=True
)

DEFAULT_URL = "http://127.0.0.1:6066"
"""Where ``aggregate run`` serves its view by default."""


@app.command("run")
def run(
    bootstrap: Annotated[
        str | None,
        typer.Option(help="Kafka bootstrap (else EDGESTREAM_AGGREGATOR_KAFKA__BOOTSTRAP_SERVERS)."),
    ] = None,
    web_port: Annotated[int | None, typer.Option(help="HTTP port of the view (default 6066).")] = None,
    window_s: Annotated[float | None, typer.Option(help="Tumbling window length (default 60 s).")] = None,
) -> None:
    """Run the aggregator until SIGTERM/SIGINT; settings from EDGESTREAM_AGGREGATOR_*."""
    from edgestream.workers.aggregator.app import AggregatorSettings
    from edgestream.workers.aggregator.app import run as run_app

    base = AggregatorSettings()
    overrides: dict[str, Any] = {}
    if bootstrap is not None:
        overrides["kafka"] = base.kafka.model_copy(update={"bootstrap_servers": bootstrap})
    if web_port is not None:
        overrides["web_port"] = web_port
    if window_s is not None:
        overrides["window_s"] = window_s
    settings = AggregatorSettings.model_validate({**base.model_dump(), **overrides}) if overrides else base
    run_app(settings)


def fetch_view(url: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """The aggregator's view (``GET <url>/windows``)."""
    import urllib.error
    import urllib.request

    from edgestream.workers.aggregator.app import VIEW_PATH

    try:
        with urllib.request.urlopen(url.rstrip("/") + VIEW_PATH, timeout=timeout_s) as response:
            view: dict[str, Any] = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as e:
        fail(f"no view from the aggregator at {url}: {e}")
    return view


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _table(view: dict[str, Any]) -> Table:
    from rich.table import Table

    rate = view.get("false_positive_rate")
    title = (
        f"aggregator windows ({view['window_s']:g} s; drift calibrated to {_num(rate, '.0%')} false alarms)"
    )
    table = Table(title=title)
    for name in ("window start", "region", "model", "version", "results", "DLQ rate"):
        table.add_column(name, justify="right" if name in ("version", "results", "DLQ rate") else "left")
    for name in ("p50 ms", "p95 ms", "p99 ms", "joined", "accuracy", "drift PSI", "threshold", "flag"):
        table.add_column(name, justify="right")
    for row in view["windows"]:
        latency = row["latency_ms"]
        drift = row["drift"]
        table.add_row(
            utc(row["start_ms"]),
            row["region"],
            row["model"],
            str(row["version"]),
            str(row["results"]),
            _num(row["dead_letter_rate"], ".2%"),
            _num(latency["p50"], "g"),
            _num(latency["p95"], "g"),
            _num(latency["p99"], "g"),
            str(row["joined"]),
            _num(row["accuracy"], ".3f"),
            _num(drift.get("worst_psi"), ".3f"),
            _num(drift.get("threshold"), ".3f"),
            "[red]DRIFT[/red]" if drift["flagged"] else "",
        )
    return table


@app.command("status")
def status(
    url: Annotated[str, typer.Option(help="The aggregator's HTTP address.")] = DEFAULT_URL,
    as_json: Annotated[bool, typer.Option("--json", help="Print the view as JSON.")] = False,
) -> None:
    """Show the aggregator's windows: results, dead-letter rate, latency percentiles, accuracy, drift."""
    from rich.console import Console

    view = fetch_view(url)
    if as_json:
        typer.echo(json.dumps(view, indent=2))
        return
    Console().print(_table(view))
