"""Process commands: ``edgestream worker``, ``edgestream fleet``, ``edgestream demo``."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections import Counter
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

if TYPE_CHECKING:
    from edgestream.workers.edge.settings import WorkerSettings
    from edgestream.workers.local.demo_result import DemoResult
    from edgestream.workers.local.demo_settings import DemoSettings
    from edgestream.workers.local.fleetreport import Progress as FleetProgress
    from edgestream.workers.local.outage_summary import OutageSummary
    from edgestream.workers.local.story import StoryEvent
    from edgestream.workers.local.summary import RegionSummary

console = Console()


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def worker(
    region: str | None = typer.Option(None, help="Region to serve (else EDGESTREAM_WORKER_REGION)."),
    bootstrap: str | None = typer.Option(
        None,
        help="Kafka bootstrap servers, over TLS when EDGESTREAM_KAFKA_SECURITY_PROTOCOL=SSL and "
        "EDGESTREAM_KAFKA_SSL_{CA,CERT,KEY}_FILE say so (else EDGESTREAM_WORKER_KAFKA__*).",
    ),
    local: bool = typer.Option(
        False, "--local", help="Use the local development broker (edgestream broker start) as edge-<region>."
    ),
) -> None:
    """Run one edge worker until SIGTERM/SIGINT; it finishes its in-flight batch before exiting.

    The worker needs to be told where its brokers are (``--bootstrap``, ``EDGESTREAM_WORKER_KAFKA__*``
    or ``--local``); without that it says so and exits 2."""
    from edgestream.workers.edge.service import serve

    settings = _worker_settings(region, bootstrap, local)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    from edgestream.commands.common import fail
    from edgestream.pipeline import eventloop
    from edgestream.pipeline.observability.tracing import TracingSetupError

    try:
        eventloop.run(main(), settings.event_loop)
    except TracingSetupError as err:  # OTEL_* names an exporter or sampler that cannot be used
        fail(f"tracing: {err}", code=2)


def _worker_settings(region: str | None, bootstrap: str | None, local: bool) -> WorkerSettings:
    from pydantic import ValidationError

    from edgestream.commands.common import fail
    from edgestream.pipeline.security.identities import Identity
    from edgestream.pipeline.settings import KafkaEnv
    from edgestream.workers.edge.settings import WorkerSettings
    from edgestream.workers.local.broker.process import local_kafka

    if bootstrap is not None and local:
        fail("--bootstrap and --local name two different brokers: pass one", code=2)
    overrides: dict[str, object] = {} if region is None else {"region": region}
    if bootstrap is not None:
        overrides["kafka"] = KafkaEnv().settings(bootstrap)
    if local:
        name = (
            region
            or os.environ.get("EDGESTREAM_WORKER_REGION")
            or WorkerSettings.model_fields["region"].default
        )
        kafka = local_kafka(Identity.edge(name))  # the local broker, as edge-<region>
        if kafka is None:
            fail("--local: the local broker is not running (edgestream broker start)", code=2)
        overrides["kafka"] = kafka
    try:
        return WorkerSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as err:
        if any(e["loc"] == ("kafka",) and e["type"] == "missing" for e in err.errors()):
            fail(
                "no Kafka brokers configured for this worker: pass --bootstrap HOST:PORT, set "
                "EDGESTREAM_WORKER_KAFKA__BOOTSTRAP_SERVERS (and its TLS files), or --local for the local "
                "development broker",
                code=2,
            )
        fail(f"invalid worker settings: {err}", code=2)


def fleet(
    duration_s: float | None = typer.Option(None, help="Seconds to send."),
    rate_per_s: float | None = typer.Option(None, help="Requests per second for the whole fleet."),
    bootstrap: str | None = typer.Option(None, help="Kafka bootstrap servers (else the local broker)."),
) -> None:
    """Run the simulated device fleet against running workers and print what it saw."""
    from edgestream.commands.common import fail
    from edgestream.pipeline.observability.tracing import TracingSetupError
    from edgestream.pipeline.settings import KafkaSettings
    from edgestream.workers.local.broker.process import local_kafka
    from edgestream.workers.local.fleet import run_fleet
    from edgestream.workers.local.fleet_settings import FleetSettings

    overrides: dict[str, object] = {}
    if duration_s is not None:
        overrides["duration_s"] = duration_s
    if rate_per_s is not None:
        overrides["rate_per_s"] = rate_per_s
    kafka = KafkaSettings(bootstrap_servers=bootstrap) if bootstrap is not None else local_kafka()
    if kafka is not None:
        overrides["kafka"] = kafka  # over TLS each region's devices connect as device-<region>
    settings = FleetSettings(**overrides)  # type: ignore[arg-type]
    try:
        report = asyncio.run(run_fleet(settings))
    except TracingSetupError as err:  # OTEL_* names an exporter or sampler that cannot be used
        fail(f"tracing: {err}", code=2)
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


def _story_table(result: DemoResult) -> Table:
    story = result.story
    assert story is not None
    table = Table(
        title=f"{story.model}: accuracy per version and input, as the devices saw it", title_justify="left"
    )
    for col in ("version", "role", "inputs", "answers", "accuracy"):
        table.add_column(col, justify="right" if col in ("answers", "accuracy") else "left")
    described = {
        "original": "original (held-out split)",
        "shifted-a": "shifted, before retraining",
        "shifted-b": "shifted, never trained on",
    }
    for row in result.versions:
        table.add_row(
            f"v{row.version}",
            row.role,
            described.get(row.inputs, row.inputs),
            str(row.answers),
            f"{row.accuracy:.3f}",
            style="red" if row.role == "bad" else None,
        )
    return table


def _devices_table(result: DemoResult) -> Table:
    table = Table(title="SDK phones through the gateways: per device class and link", title_justify="left")
    for col in (
        "class",
        "link",
        "phones",
        "calls",
        "edge",
        "fallback (why)",
        "tier asked",
        "refused",
        "reconnects",
        "failovers",
        "outages",
        "rtt ms",
    ):
        table.add_column(
            col, justify="left" if col in ("class", "link", "fallback (why)", "tier asked") else "right"
        )
    for row in result.devices:
        why = ", ".join(f"{k} {v}" for k, v in sorted(row.fallback.items())) or "0"
        tiers = ", ".join(f"{k} {v}" for k, v in sorted(row.tiers.items()))
        table.add_row(
            row.device_class,
            row.link,
            str(row.phones),
            str(row.calls),
            str(row.edge),
            why,
            tiers,
            str(row.refused_replies),
            str(row.reconnects),
            str(row.failovers),
            str(row.outages),
            _fmt(row.rtt_ms, ".0f"),
        )
    return table


def _paths_table(result: DemoResult) -> Table:
    table = Table(
        title="device round trip by path (direct: the device produces to Kafka; phone/<link>: through "
        "its gateway, over a simulated link whose own round trip counts)",
        title_justify="left",
    )
    for col in ("path", "requests", "edge in deadline", "fallbacks", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(col, justify="left" if col == "path" else "right")
    for row in result.round_trip_paths:
        share = "-" if row.edge_share is None else f"{row.edge_share:.2%}"
        table.add_row(
            row.path,
            str(row.requests),
            f"{row.edge} ({share})",
            str(row.fallbacks),
            _fmt(row.p50_ms),
            _fmt(row.p95_ms),
            _fmt(row.p99_ms),
        )
    return table


def _print_devices(result: DemoResult) -> None:
    console.print(_devices_table(result))
    late = sum(r.late_agreed + r.late_disagreed for r in result.devices)
    disagreed = sum(r.late_disagreed for r in result.devices)
    console.print(
        f"phones: late edge answers reconciled with the fallback's {late} ({disagreed} disagreed: "
        f"labelling candidates); resends {sum(r.resends for r in result.devices)}, duplicate replies "
        f"dropped {sum(r.duplicates for r in result.devices)}"
    )
    rejected: Counter[str] = sum((Counter(r.rejected) for r in result.devices), Counter())
    if rejected:
        console.print(
            "envelopes the gateways refused: " + ", ".join(f"{k} {v}" for k, v in sorted(rejected.items()))
        )
    for row in result.device_agreement:
        agreement = "-" if row["agreement"] is None else f"{row['agreement']:.3f}"
        console.print(
            f"  cloud /device-agreement {row['region']} {row['model']} edge v{row['edge_version']} vs "
            f"fallback v{row['fallback_version']}: {row['agree']} agree, {row['disagree']} disagree "
            f"({agreement})"
        )


def _outage_table(outage: OutageSummary) -> Table:
    table = Table(
        title=f"worker outage in {outage.region}: calls of the region by capture time (down: from the "
        f"{outage.signal} to the restart; restarting: from the restart to the first edge answer)",
        title_justify="left",
    )
    for col in (
        "window",
        "path",
        "captured",
        "edge",
        "fallback",
        "fallback in deadline",
        "past deadline",
        "no answer",
        "slowest fallback ms",
    ):
        table.add_column(col, justify="left" if col in ("window", "path") else "right")
    for row in outage.rows:
        table.add_row(
            row.window,
            row.path,
            str(row.captured),
            str(row.edge),
            str(row.fallback),
            str(row.fallback_in_deadline),
            str(row.past_deadline),
            str(row.no_answer),
            f"{_fmt(row.max_fallback_ms)} (of {outage.deadline_ms:g})",
            style="bold" if row.path == "all" else None,
        )
    return table


def _print_outage(outage: OutageSummary) -> None:
    console.print(_outage_table(outage))
    back = "no edge answer after the restart"
    if outage.edge_back_after_s is not None:
        paths = ", ".join(f"{p} {_fmt(s)} s" for p, s in outage.edge_back_by_path.items())
        back = f"the first edge answer {outage.edge_back_after_s:.1f} s after the restart ({paths})"
    console.print(
        f"worker outage: {outage.signal} at {outage.stopped_at_s:.1f} s, exited "
        f"{outage.exited_after_s:.1f} s later, down {outage.down_s:.1f} s; restarted, ready "
        f"{outage.ready_after_s:.1f} s after its start; {back}"
    )


def _print_story(result: DemoResult) -> None:
    story = result.story
    assert story is not None
    console.print(_story_table(result))
    if story.drift is not None:
        d = story.drift
        console.print(
            f"drift: first flagged window {d['region']} v{d['version']}, {d['samples']} samples, "
            f"PSI {d['psi']:.2f} ({d['test']}; calibrated threshold "
            f"{d['threshold']:.2f})"
        )
    for side, what in (("before", "before the shift"), ("after", "after it")):
        counts = story.drift_windows.get(side)
        if counts:
            console.print(
                f"region windows {what}: {counts['flagged']} of {counts['judged']} judged flagged "
                f"(largest PSI {_fmt(counts['max_psi'], '.2f')})"
            )
    if story.retrain is not None:
        r = story.retrain
        console.print(
            f"retrained v{story.retrained}: {r['joined']} labelled samples ({r['distinct']} distinct "
            f"inputs), holdout {r['holdout_size']}: {r['candidate_accuracy']:.3f} vs "
            f"v{r['stable_version']} {r['stable_accuracy']:.3f} (margin {r['margin']:+.3f})"
        )
    if story.bad_retrain is not None:
        r = story.bad_retrain
        console.print(
            f"bad candidate v{story.bad}: trained on inverted labels; offline holdout "
            f"{r['candidate_accuracy']:.3f} against them, {r['true_accuracy']:.3f} against the true labels"
        )
    if story.rollback_s is not None:
        console.print(
            f"rollback of v{story.bad}: {story.rollback_s:.1f} s after its canary started; every worker "
            f"applied it {story.rollback_applied_s:.1f} s later; answers by v{story.bad} to requests "
            f"captured after that: {result.bad_after_rollback}"
        )
    if story.stalled is not None:
        console.print(f"[bold red]the story stalled: {story.stalled}[/]")
    console.print(f"story plot: {result.paths.story_plot}")


def demo(
    duration_s: float | None = typer.Option(
        None, help="Seconds the fleet sends without the story (default 40)."
    ),
    rate_per_s: float | None = typer.Option(None, help="Requests per second, whole fleet (default 150)."),
    phones: float | None = typer.Option(
        None,
        help="Share of the devices that are SDK phones asking through the gateways (default 0.2; 0: none).",
    ),
    story: bool = typer.Option(
        True,
        "--story/--no-story",
        help="Tell the learning loop: data shift, drift, retrain, canary to stable, bad candidate rolled "
        "back (the fleet runs until it is told).",
    ),
    worker_outage: float | None = typer.Option(
        None,
        "--worker-outage",
        metavar="SECONDS",
        help="With --no-story: stop a region's edge worker (SIGKILL; EDGESTREAM_DEMO_OUTAGE__SIGNAL=SIGTERM "
        "for a clean stop) while the fleet sends, start it again SECONDS later, and count who answered "
        "meanwhile. Off by default.",
    ),
    outage_at: float | None = typer.Option(
        None,
        "--outage-at",
        metavar="SECONDS",
        help="With --worker-outage: when, after the fleet starts sending (default 10).",
    ),
    outage_region: str | None = typer.Option(
        None, "--outage-region", help="With --worker-outage: whose worker (default: the first region)."
    ),
) -> None:
    """Broker, topics, one edge worker per region, the cloud aggregator, a simulated fleet and the
    learning loop; then a summary and plots."""
    from edgestream.workers.local.demo import run_demo

    quiet = logging.getLogger("edgestream")
    if not quiet.isEnabledFor(logging.DEBUG):  # workers log to files; keep this terminal for the display
        quiet.setLevel(logging.WARNING)
    settings = _demo_settings(duration_s, rate_per_s, phones, story, worker_outage, outage_at, outage_region)
    told = settings.story.enabled
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("fleet", total=None if told else settings.duration_s, info="", visible=False)

        def on_step(msg: str) -> None:
            progress.console.print(f"[cyan]>[/] {msg}")

        def on_event(event: StoryEvent) -> None:
            progress.console.print(f"[magenta]  {event.t_s:6.1f} s[/] {event.text}", highlight=False)

        def on_progress(p: FleetProgress) -> None:
            progress.update(
                task,
                visible=True,
                completed=p.elapsed_s if told else min(p.elapsed_s, p.duration_s),
                info=f"sent {p.sent}  answered {p.answered}  fallbacks {p.fallbacks}  "
                f"p99 {_fmt(p.p99_ms)} ms",
            )

        result = run_demo(settings, on_step=on_step, on_progress=on_progress, on_event=on_event)
    _print_demo(result)


def _demo_settings(
    duration_s: float | None,
    rate_per_s: float | None,
    phones: float | None,
    story: bool,
    worker_outage: float | None,
    outage_at: float | None,
    outage_region: str | None,
) -> DemoSettings:
    """The demo's settings: the environment's (``EDGESTREAM_DEMO_*``) with the options given on top;
    options that do not go together, or values out of range, end the command with exit code 2."""
    from pydantic import ValidationError

    from edgestream.commands.common import fail
    from edgestream.workers.local.demo_settings import DemoSettings
    from edgestream.workers.local.outage import WorkerOutage
    from edgestream.workers.local.story import StorySettings

    overrides: dict[str, object] = {}
    if duration_s is not None:
        overrides["duration_s"] = duration_s
    if rate_per_s is not None:
        overrides["rate_per_s"] = rate_per_s
    if phones is not None:
        overrides["phone_fraction"] = phones
    if not story:
        overrides["story"] = StorySettings(enabled=False)
    if worker_outage is None and (outage_at is not None or outage_region is not None):
        fail("--outage-at and --outage-region go with --worker-outage SECONDS", code=2)
    if worker_outage is not None:
        if story:
            fail("--worker-outage runs with --no-story only: the story's steps wait for every worker", code=2)
        asked: dict[str, object] = {"duration_s": worker_outage, "region": outage_region}
        if outage_at is not None:
            asked["start_s"] = outage_at
        try:
            overrides["outage"] = WorkerOutage.model_validate(asked)
        except ValidationError as err:
            fail(f"invalid worker outage: {err}", code=2)
    try:
        return DemoSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as err:
        fail(f"invalid demo settings: {err}", code=2)


def _print_demo(result: DemoResult) -> None:
    """The demo's summary after its run: tables, the SLA report, where the plots and logs are."""
    from edgestream.commands.sla import print_demo_report

    console.print(_summary_table(result))
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(result.total.dead_letter_reasons.items())) or "none"
    console.print(f"dead letters by reason: {reasons}")
    console.print(
        f"late results (after the device fell back): {result.total.late}; "
        f"duplicate results: {result.total.duplicates}"
    )
    refused = ", ".join(f"{k} {v}" for k, v in sorted(result.refused_replies.items())) or "none"
    console.print(f"replies the Kafka-native devices refused to open: {refused}")
    if result.host_cpu is not None:
        console.print(result.host_cpu.line())
    if result.part_cpu:
        from edgestream.workers.local.partcpu import parts_line

        console.print(parts_line(result.part_cpu))
    if result.devices:
        _print_devices(result)
    if result.round_trip_paths:
        console.print(_paths_table(result))
    if result.outage is not None:
        _print_outage(result.outage)
    if result.cloud:
        console.print(_cloud_table(result))
    accuracy = ", ".join(f"{k} {v:.3f}" for k, v in sorted(result.model_accuracy.items()))
    console.print(f"held-out accuracy of the models served / fallback: {accuracy}")
    if result.story is not None:
        _print_story(result)
    print_demo_report(console, result.paths.root)
    console.print(f"latency plot: {result.paths.plot}")
    console.print(f"summary JSON: {result.paths.summary}")
    broker_log = f", broker log {result.broker_log}" if result.broker_log else ""
    console.print(f"logs: worker logs in {result.paths.logs}{broker_log}")


def register(app: typer.Typer) -> None:
    """Mount the process commands on the root app."""
    app.command("worker")(worker)
    app.command("fleet")(fleet)
    app.command("demo")(demo)
