"""`edgestream dlq ...`: inspect a region's dead letters and replay them to their origin topics.

Both commands read the DLQ to the end it has when they start, then stop (``workers.ops.dlq``): the
commands parse their options and print what was found or sent.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Final

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgestream.commands.common import run
from edgestream.commands.topics import Bootstrap
from edgestream.workers.ops.dlq import DEFAULT_TIMEOUT_MS, Inspection, ReplayReport, inspect_dlq, replay

if TYPE_CHECKING:
    from edgestream.pipeline.contract.deadletter import DeadLetter
    from edgestream.pipeline.settings import KafkaSettings

app = typer.Typer(help="Inspect a region's dead letters and replay them.", no_args_is_help=True)

DEFAULT_LIMIT: Final = 20
"""Entries ``inspect`` shows by default."""

_TABLE_MESSAGE_CHARS: Final = 120


# -- output ----------------------------------------------------------------------------------------


def _bootstrap(option: str | None) -> KafkaSettings:
    from edgestream.commands.topics import resolve_kafka

    return resolve_kafka(option)


def _when(ms: int | None, *, with_ms: bool = True) -> str:
    if ms is None:
        return ""
    text = datetime.fromtimestamp(ms / 1000.0, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return (text[:-3] if with_ms else text[:-7]) + "Z"


def _shorten(text: str) -> str:
    return text if len(text) <= _TABLE_MESSAGE_CHARS else text[: _TABLE_MESSAGE_CHARS - 1] + "…"


def _key_text(key: bytes | None) -> str:
    return "" if key is None else key.decode("utf-8", errors="replace")


def _as_json(letter: DeadLetter) -> dict[str, Any]:
    key_text: str | None = None
    if letter.key is not None:
        try:
            key_text = letter.key.decode()
        except UnicodeDecodeError:
            key_text = None
    return {
        "dlq_topic": letter.dlq_topic,
        "dlq_partition": letter.dlq_partition,
        "dlq_offset": letter.dlq_offset,
        "reason": letter.reason,
        "stage": letter.stage,
        "origin_topic": letter.origin_topic,
        "origin_partition": letter.origin_partition,
        "origin_offset": letter.origin_offset,
        "origin_timestamp_ms": letter.origin_timestamp_ms,
        "group_id": letter.group_id,
        "worker_id": letter.worker_id,
        "exception_class": letter.exception_class,
        "message": letter.message,
        "key_id": letter.key_id,
        "attempt": letter.attempt,
        "dead_lettered_at_ms": letter.dead_lettered_at_ms,
        "key": key_text,
        "key_b64": None if letter.key is None else base64.b64encode(letter.key).decode(),
        "value_bytes": len(letter.value),
        "headers": [name for name, _ in letter.origin_headers],
    }


def _summary_table(title: str, found: Inspection) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("reason")
    table.add_column("count", justify="right")
    table.add_column("first (UTC)")
    table.add_column("last (UTC)")
    table.add_column("origin topics")
    by_count = sorted(found.by_reason.items(), key=lambda kv: (-kv[1].count, kv[0]))
    for code, s in by_count:
        origins = ", ".join(f"{t} ({n})" for t, n in s.origins.most_common())
        table.add_row(escape(code), str(s.count), _when(s.first_ms), _when(s.last_ms), escape(origins))
    return table


def _entries_table(title: str, letters: Sequence[DeadLetter]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("dlq offset", "dead-lettered (UTC)", "reason"):
        table.add_column(column)
    table.add_column("origin", overflow="fold")
    table.add_column("worker", overflow="fold")
    table.add_column("attempt", justify="right")
    table.add_column("message", overflow="fold")
    table.add_column("value", justify="right")
    for letter in letters:
        table.add_row(
            f"{letter.dlq_partition}@{letter.dlq_offset}",
            _when(letter.dead_lettered_at_ms, with_ms=False),
            escape(letter.reason),
            escape(letter.origin_position()),
            escape(letter.worker_id),
            str(letter.attempt),
            escape(_shorten(letter.message)),
            f"{len(letter.value)} B",
        )
    return table


Region = Annotated[str, typer.Option("--region", "-r", help="Region whose DLQ to read.", show_default=False)]
TimeoutMs = Annotated[
    int,
    typer.Option("--timeout-ms", min=1, help="Bound on reading the DLQ to its end and on each request."),
]


@app.command()
def inspect(
    region: Region,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Only this reason code.", show_default=False)
    ] = None,
    since_ms: Annotated[
        int | None,
        typer.Option("--since-ms", help="Only dead letters from this unix time (ms) on.", show_default=False),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=0, help="Newest entries to show (0: all).")] = (
        DEFAULT_LIMIT
    ),
    bootstrap: Bootstrap = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the entries as JSON lines (one object each), no tables.")
    ] = False,
    timeout_ms: TimeoutMs = DEFAULT_TIMEOUT_MS,
) -> None:
    """Summarise a region's dead letters by reason and list the newest ones.

    Reads the DLQ from the beginning to the end it has now (read_committed, no consumer group).
    """
    from edgestream.topics.catalogue import dlq_topic

    address = _bootstrap(bootstrap)
    found: Inspection = run(
        inspect_dlq(address, region, reason=reason, since_ms=since_ms, limit=limit, timeout_ms=timeout_ms)
    )
    err = Console(stderr=True)
    for bad in found.malformed:
        err.print(f"[yellow]warning:[/yellow] {escape(str(bad))}", highlight=False, soft_wrap=True)
    if as_json:
        for letter in found.newest:
            typer.echo(json.dumps(_as_json(letter), ensure_ascii=False))
        return
    out = Console()
    matching = sum(s.count for s in found.by_reason.values())
    filters = [f"reason {reason}"] if reason is not None else []
    filters += [f"since {_when(since_ms)}"] if since_ms is not None else []
    shown = f" ({', '.join(filters)})" if filters else ""
    out.print(
        f"{dlq_topic(region)}: {found.total} record(s), {matching} matching{shown}, "
        f"{len(found.malformed)} malformed",
        highlight=False,
    )
    if not matching:
        return
    out.print(_summary_table("Dead letters by reason", found))
    out.print(_entries_table(f"Newest {len(found.newest)}", list(found.newest)))


@app.command("replay")
def replay_(
    region: Region,
    reason: Annotated[
        str,
        typer.Option("--reason", help="Reason code of the dead letters to send back.", show_default=False),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be sent; send and commit nothing.")
    ] = False,
    bootstrap: Bootstrap = None,
    timeout_ms: TimeoutMs = DEFAULT_TIMEOUT_MS,
) -> None:
    """Send a region's dead letters of one reason back to their origin topics, each once.

    The original key, bytes and headers go back with ``edgestream.replayed-from`` and the attempt count
    plus one. Progress is kept in the consumer group edgestream-dlq-replay-<region>-<reason>, committed
    in the same transaction as the re-sent records, so running it again sends only newer dead letters.
    """
    report: ReplayReport = run(
        replay(_bootstrap(bootstrap), region, reason, dry_run=dry_run, timeout_ms=timeout_ms)
    )
    out = Console()
    verb = "would send" if dry_run else "sent"
    if report.sent:
        table = Table(title=f"{verb.capitalize()} to origin topics", title_justify="left")
        for column in ("dead letter", "to", "key", "value", "attempt"):
            table.add_column(column)
        for letter in report.sent:
            table.add_row(
                escape(letter.dlq_position()),
                escape(letter.origin_topic),
                escape(_key_text(letter.key)),
                f"{len(letter.value)} B",
                f"{letter.attempt} -> {letter.attempt + 1}",
            )
        out.print(table)
    skipped = ", ".join(f"{why}: {n}" for why, n in sorted(report.skipped.items()))
    out.print(
        f"{verb} {len(report.sent)}, skipped {sum(report.skipped.values())}"
        + (f" ({skipped})" if skipped else "")
        + f"; group {report.group_id}"
        + (" (dry run: nothing sent or committed)" if dry_run else ""),
        highlight=False,
    )
