"""`edgestream rollout ...`: the automatic rollout controller (judge a canary, advance or roll it back).

The controller is ``workers.rollout_controller``; the command parses the bounds and prints each verdict."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from edgestream.commands.common import fail, run
from edgestream.commands.keys import parse_duration_ms
from edgestream.commands.registry import SIGNING_KEY_FILE, TRUSTED_KEYS_FILE, Home, registry_home
from edgestream.commands.topics import Bootstrap

if TYPE_CHECKING:
    from edgestream.pipeline.learning.rollout import Bounds, Verdict

app = typer.Typer(help="Automatic rollout: advance a canary's stages or roll it back.", no_args_is_help=True)

_out = Console()
_STYLE = {"advance": "green", "hold": "yellow", "rollback": "red"}


def parse_bounds(text: str | None) -> Bounds:
    """``key=value,key=value`` over the defaults of :class:`Bounds` (durations like ``10m`` for
    ``stage_dwell_ms``); a bad key or value exits naming it."""
    from pydantic import ValidationError

    from edgestream.pipeline.learning.rollout import Bounds

    values: dict[str, object] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            fail(f"--bounds {item!r}: use KEY=VALUE, e.g. max_error_rate_increase=0.02")
        values[name] = (
            parse_duration_ms(value) if name == "stage_dwell_ms" and value[-1:].isalpha() else value
        )
    try:
        return Bounds.model_validate(values)
    except ValidationError as e:
        fail(f"--bounds: {e}")


def _print(model: str, verdict: Verdict) -> None:
    style = _STYLE[verdict.action]
    published = "" if verdict.revision is None else f" -> revision {verdict.revision}"
    _out.print(f"{model}: [{style}]{verdict.action}[/{style}]{published}", highlight=False)
    for reason in verdict.reasons:
        _out.print(f"  {reason}", highlight=False, markup=False)
    if verdict.canary is not None and verdict.stable is not None:
        _out.print(f"  canary {verdict.canary.describe()}", highlight=False, markup=False)
        _out.print(f"  stable {verdict.stable.describe()}", highlight=False, markup=False)


@app.command()
def watch(
    model: Annotated[str, typer.Argument(help="Model name, e.g. frame-classifier.")],
    interval: Annotated[str, typer.Option("--interval", help="Time between steps, e.g. 5s, 1m.")] = "5s",
    once: Annotated[bool, typer.Option("--once", help="Judge once, apply the verdict and exit.")] = False,
    bounds: Annotated[
        str | None,
        typer.Option(
            "--bounds",
            help="KEY=VALUE,... over the defaults: max_error_rate_increase (0.02), max_p99_ratio (1.5), "
            "max_accuracy_drop (0.03), min_requests (100), min_latency_requests (300), min_labelled (100), "
            "stage_dwell_ms (10m).",
        ),
    ] = None,
    stats_dir: Annotated[
        Path | None,
        typer.Option(
            "--stats-dir",
            help="Read the workers' revisions from their stats files in this directory (one host) "
            "instead of control.workers.",
        ),
    ] = None,
    lag_check: Annotated[
        bool,
        typer.Option(
            "--lag-check/--no-lag-check",
            help="Advance a stage only when every live worker serving the model reports the current "
            "revision (on control.workers, or --stats-dir).",
        ),
    ] = True,
    labels: Annotated[
        bool,
        typer.Option(
            "--labels/--no-labels",
            help="Judge accuracy from cloud.labels, and advance a stage only once each version has "
            "min_labelled labelled answers; --no-labels where no labels come (errors and latency only).",
        ),
    ] = True,
    health_port: Annotated[
        int | None,
        typer.Option(
            "--health-port",
            help="Serve /livez, /readyz and /metrics on this port while watching (0: any free port).",
        ),
    ] = None,
    health_host: Annotated[
        str, typer.Option("--health-host", help="Address of the health and metrics server.")
    ] = "127.0.0.1",
    home: Home = None,
    bootstrap: Bootstrap = None,
) -> None:
    """Judge MODEL's canary against stable from cloud.summaries; advance its stage or roll it back
    (the state is verified under, and published signed by, the registry keys in --home)."""
    from edgestream.commands.topics import resolve_kafka
    from edgestream.pipeline.errors import EdgestreamError
    from edgestream.pipeline.registry.reports import TopicWorkerView
    from edgestream.pipeline.registry.signing import SigningKey, TrustedKeys
    from edgestream.workers.rollout_controller import (
        Controller,
        FileWorkerView,
        WorkerView,
        watch_until_signalled,
    )

    interval_s = parse_duration_ms(interval) / 1000
    kafka = resolve_kafka(bootstrap)
    workers: WorkerView | None = None
    if not lag_check:
        _out.print("[yellow]--no-lag-check: a stage may advance while a worker lags[/yellow]")
    elif stats_dir is not None:
        workers = FileWorkerView(stats_dir)
    else:
        workers = TopicWorkerView(kafka)
    root = registry_home(home)
    try:
        signer = SigningKey.load(root / SIGNING_KEY_FILE)
        trusted = TrustedKeys.load(root / TRUSTED_KEYS_FILE)
    except EdgestreamError as e:
        fail(str(e))
    if not labels:
        _out.print("[yellow]--no-labels: a canary advances on its errors and latency alone[/yellow]")
    controller = Controller(
        kafka, parse_bounds(bounds), signer=signer, trusted=trusted, workers=workers, labels=labels
    )

    async def go() -> None:
        try:
            async with controller:
                await judge()
        finally:
            if isinstance(workers, TopicWorkerView):
                await workers.close()

    async def judge() -> None:
        if once:
            _print(model, await controller.step(model))
        else:
            await watch_until_signalled(
                controller,
                model,
                interval_s=interval_s,
                on_verdict=lambda v: _print(model, v),
                health_host=health_host,
                health_port=health_port,
            )

    run(go())
