"""`edgestream topics ...`: create the catalogue's topics, list them, describe them."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from collections.abc import Sequence

    from edgestream.topics.admin import TopicDescription
    from edgestream.topics.errors import TopicConfigMismatch

app = typer.Typer(help="Create, list and describe the catalogue's Kafka topics.", no_args_is_help=True)

BOOTSTRAP_ENV = "EDGESTREAM_KAFKA_BOOTSTRAP"
EXIT_ERROR = 1
EXIT_MISMATCH = 2

_out = Console()
_err = Console(stderr=True)

Bootstrap = Annotated[
    str | None,
    typer.Option(
        "--bootstrap",
        "-b",
        envvar=BOOTSTRAP_ENV,
        help="Broker HOST:PORT. Default: the local broker's state file (edgestream broker start).",
        show_default=False,
    ),
]
TimeoutMs = Annotated[
    int | None,
    typer.Option(
        "--timeout-ms", min=1, help="Bound on each broker request [default: 30000].", show_default=False
    ),
]


def _default_bootstrap() -> str:
    """The local broker's bootstrap address (``edgestream broker start``)."""
    from edgestream.workers.broker import local_bootstrap

    bootstrap = local_bootstrap()
    if bootstrap is None:
        _fail(
            f"no broker address: pass --bootstrap, set {BOOTSTRAP_ENV}, or start the local broker "
            "(edgestream broker start)"
        )
    return bootstrap


def _bootstrap(option: str | None) -> str:
    return option if option else _default_bootstrap()


def _given(**options: int | None) -> dict[str, int]:
    """The options the user gave; the rest keep the admin module's defaults."""
    return {name: value for name, value in options.items() if value is not None}


def _fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    _err.print(f"[red]error:[/red] {message}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _human_ms(value: str | int | None) -> str:
    """``86400000`` -> ``1 d``; ``-1`` or None -> ``forever``; anything else as given."""
    try:
        ms = int(value) if value is not None else -1
    except ValueError:
        return str(value)
    if ms < 0:
        return "forever"
    for unit_ms, unit in ((86_400_000, "d"), (3_600_000, "h"), (60_000, "min"), (1000, "s")):
        if ms >= unit_ms and ms % unit_ms == 0:
            return f"{ms // unit_ms} {unit}"
    return f"{ms} ms"


def _print_mismatch(error: TopicConfigMismatch) -> NoReturn:
    table = Table(title="Existing topics that differ from the catalogue", title_justify="left")
    for column in ("topic", "setting", "catalogue", "broker"):
        table.add_column(column)
    for d in error.differences:
        table.add_row(d.topic, d.setting, d.expected, f"[red]{d.actual}[/red]")
    _err.print(table)
    _fail(
        "nothing was created; edgestream never alters existing topics: fix or delete the topics above "
        "(or point --bootstrap at the right cluster)",
        EXIT_MISMATCH,
    )


@app.command()
def create(
    region: Annotated[
        list[str] | None,
        typer.Option(
            "--region",
            "-r",
            help="Region to create topics for; repeat for several. Default: the default regions.",
            show_default=False,
        ),
    ] = None,
    bootstrap: Bootstrap = None,
    replication_factor: Annotated[
        int | None,
        typer.Option(
            "--replication-factor",
            min=1,
            help="Replicas per partition [default: 1, for a single dev broker].",
            show_default=False,
        ),
    ] = None,
    timeout_ms: TimeoutMs = None,
) -> None:
    """Create the catalogue's topics for the regions, plus the cloud and control topics (idempotent).

    Exits 2, naming every difference, when an existing topic's partitions or configs differ.
    """
    from edgestream.pipeline.errors import EdgestreamError
    from edgestream.pipeline.settings import DEFAULT_REGIONS
    from edgestream.topics.admin import ensure_topics
    from edgestream.topics.catalogue import all_topics
    from edgestream.topics.errors import TopicConfigMismatch

    regions = region or [r.name for r in DEFAULT_REGIONS]
    try:
        topics = all_topics(regions)
        report = asyncio.run(
            ensure_topics(
                _bootstrap(bootstrap),
                topics,
                **_given(replication_factor=replication_factor, timeout_ms=timeout_ms),
            )
        )
    except TopicConfigMismatch as e:
        _print_mismatch(e)
    except EdgestreamError as e:
        _fail(str(e))
    created = set(report.created)
    table = Table(title=f"Topics for {', '.join(dict.fromkeys(regions))}", title_justify="left")
    table.add_column("topic")
    table.add_column("partitions", justify="right")
    table.add_column("retention", justify="right")
    table.add_column("cleanup")
    table.add_column("status")
    for topic in topics:
        status = "[green]created[/green]" if topic.name in created else "exists"
        spec = topic.spec
        table.add_row(
            topic.name, str(spec.partitions), _human_ms(spec.retention_ms), spec.cleanup_policy, status
        )
    _out.print(table)
    _out.print(f"{len(report.created)} created, {len(report.existing)} already there and matching.")


def _describe(bootstrap: str, names: Sequence[str], timeout_ms: int | None) -> list[TopicDescription]:
    from edgestream.topics.admin import describe_topics

    return asyncio.run(describe_topics(bootstrap, names, **_given(timeout_ms=timeout_ms)))


@app.command("list")
def list_(
    bootstrap: Bootstrap = None,
    all_: Annotated[
        bool, typer.Option("--all", "-a", help="Also show topics outside the catalogue.")
    ] = False,
    timeout_ms: TimeoutMs = None,
) -> None:
    """List the cluster's catalogue topics with their partitions, retention and whether they match."""
    from edgestream.pipeline.errors import EdgestreamError
    from edgestream.topics.admin import list_topics
    from edgestream.topics.catalogue import CLEANUP_POLICY, RETENTION_MS, is_catalogue_topic

    address = _bootstrap(bootstrap)
    try:
        names = asyncio.run(list_topics(address, include_foreign=all_, **_given(timeout_ms=timeout_ms)))
        ours = [name for name in names if is_catalogue_topic(name)]
        described = {d.name: d for d in _describe(address, ours, timeout_ms)} if ours else {}
    except EdgestreamError as e:
        _fail(str(e))
    table = Table(title=f"Topics on {address}", title_justify="left")
    table.add_column("topic")
    table.add_column("partitions", justify="right")
    table.add_column("retention", justify="right")
    table.add_column("cleanup")
    table.add_column("catalogue")
    for name in names:
        d = described.get(name)
        if d is None:
            table.add_row(name, "", "", "", "[dim]not in catalogue[/dim]")
            continue
        state = "[red]differs[/red]" if d.differences() else "[green]matches[/green]"
        table.add_row(
            name,
            str(d.partitions),
            _human_ms(d.configs.get(RETENTION_MS)),
            d.configs.get(CLEANUP_POLICY, ""),
            state,
        )
    _out.print(table)


def _description_table(d: TopicDescription) -> Table:
    spec = d.topic.spec
    differing = {diff.setting for diff in d.differences()}
    table = Table(title=d.name, title_justify="left")
    table.add_column("setting")
    table.add_column("broker")
    table.add_column("catalogue")
    rows = [("partitions", str(d.partitions), str(spec.partitions))]
    rows += [(key, d.configs.get(key, ""), expected) for key, expected in spec.topic_configs().items()]
    for setting, broker, catalogue in rows:
        table.add_row(setting, f"[red]{broker}[/red]" if setting in differing else broker, catalogue)
    table.add_row("replication factor", str(d.replication_factor), "")
    for setting, catalogue in (("scope", spec.scope), ("key", spec.key), ("value", spec.value)):
        table.add_row(setting, "", catalogue)
    table.add_row("notes", "", spec.notes)
    return table


@app.command()
def describe(
    names: Annotated[list[str], typer.Argument(metavar="NAME", help="Topic names.", show_default=False)],
    bootstrap: Bootstrap = None,
    timeout_ms: TimeoutMs = None,
) -> None:
    """Describe topics: the broker's partitions and configs beside the catalogue's."""
    from edgestream.pipeline.errors import EdgestreamError

    try:
        descriptions = _describe(_bootstrap(bootstrap), names, timeout_ms)
    except EdgestreamError as e:
        _fail(str(e))
    for d in descriptions:
        _out.print(_description_table(d))
    if any(d.differences() for d in descriptions):
        _err.print("[red]some settings differ from the catalogue (in red)[/red]")
