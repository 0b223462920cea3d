"""`edgestream audit verify`: check the tamper-evident hash chains of a region's audit records.

The reading and checking is ``workers.ops.audit``; the command prints the chains and their problems (or
one JSON object). Exits 1 when a chain has a problem or a head is garbled.
"""

from __future__ import annotations

import json
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Annotated, Any, Final, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgestream.commands.common import run
from edgestream.commands.topics import Bootstrap
from edgestream.workers.ops.audit import DEFAULT_TIMEOUT_MS, AuditLog, verify_audit_log

if TYPE_CHECKING:
    from edgestream.pipeline.serving.auditchain import ChainHead
    from edgestream.pipeline.serving.auditverify import ChainReport, Position, Problem, SegmentSummary
    from edgestream.pipeline.settings import KafkaSettings

T = TypeVar("T")

app = typer.Typer(
    help="Verify the tamper-evident hash chains of a region's audit records.", no_args_is_help=True
)

EXIT_PROBLEMS: Final = 1
"""Exit status when a chain has a problem or a head is garbled (and when the topic cannot be read)."""


# -- output ----------------------------------------------------------------------------------------


def _bootstrap(option: str | None) -> KafkaSettings:
    from edgestream.commands.topics import resolve_kafka

    return resolve_kafka(option)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return run(coro, EXIT_PROBLEMS)


def _position_json(position: Position) -> dict[str, Any]:
    return {"topic": position.topic, "partition": position.partition, "offset": position.offset}


def _head_json(head: ChainHead | None) -> dict[str, Any] | None:
    if head is None:
        return None
    return {"segment": head.segment, "seq": head.seq, "digest": head.digest.hex()}


def _problem_json(problem: Problem) -> dict[str, Any]:
    return {
        "kind": problem.kind,
        "chain": problem.chain,
        "segment": problem.segment,
        "first_seq": problem.first_seq,
        "last_seq": problem.last_seq,
        "positions": [_position_json(p) for p in problem.positions],
        "message": problem.message,
    }


def _segment_json(summary: SegmentSummary) -> dict[str, Any]:
    return {
        "chain": summary.chain,
        "segment": summary.segment,
        "records": summary.records,
        "first_seq": summary.first_seq,
        "last_seq": summary.last_seq,
        "head": _head_json(summary.head),
    }


def _as_json(found: AuditLog, report: ChainReport) -> dict[str, Any]:
    return {
        "topic": found.topic,
        "group": found.group_id,
        "ok": report.ok and not found.bad_heads,
        "records": report.records,
        "legacy": report.legacy,
        "copies": report.copies,
        "expired": report.expired,
        "segments": [_segment_json(s) for s in report.segments],
        "problems": [_problem_json(p) for p in report.problems],
        "bad_heads": [{"chain": chain, "message": str(err)} for chain, err in found.bad_heads.items()],
    }


def _segments_table(report: ChainReport) -> Table:
    problems: dict[tuple[str | None, int | None], int] = {}
    for p in report.problems:
        problems[(p.chain, p.segment)] = problems.get((p.chain, p.segment), 0) + 1
    table = Table(title="Chains", title_justify="left")
    table.add_column("chain", overflow="fold")
    table.add_column("segment", justify="right")
    table.add_column("records", justify="right")
    table.add_column("seq", justify="right")
    table.add_column("committed head", justify="right")
    table.add_column("status")
    for s in report.segments:
        seqs = "" if s.first_seq is None else f"{s.first_seq}..{s.last_seq}"
        count = problems.get((s.chain, s.segment), 0)
        status = "[green]ok[/green]" if not count else f"[red]{count} problem(s)[/red]"
        head = "" if s.head is None else str(s.head.seq)
        table.add_row(escape(s.chain), str(s.segment), str(s.records), seqs, head, status)
    return table


def _print(found: AuditLog, report: ChainReport) -> None:
    out = Console()
    chained = report.records - report.legacy - sum(p.kind == "undecodable" for p in report.problems)
    chains = len({s.chain for s in report.segments})
    out.print(
        f"{found.topic}: {report.records} record(s), {chained} chained in {len(report.segments)} "
        f"segment(s) of {chains} chain(s), {report.legacy} without chain fields, {report.copies} "
        f"identical copies; {len(found.heads)} committed head(s) from group {found.group_id}",
        highlight=False,
        soft_wrap=True,
    )
    if report.expired:
        out.print(
            "[yellow]note:[/yellow] an audit partition starts after offset 0 (retention): records "
            "missing from the start of a segment are not reported",
            highlight=False,
            soft_wrap=True,
        )
    if report.segments:
        out.print(_segments_table(report))
    for p in report.problems:
        out.print(f"[red]{p.kind}[/red] {escape(p.message)}", highlight=False, soft_wrap=True)
    for chain, err in found.bad_heads.items():
        out.print(f"[red]bad head[/red] {escape(chain)}: {escape(str(err))}", highlight=False, soft_wrap=True)
    problems = len(report.problems) + len(found.bad_heads)
    if problems:
        out.print(f"[red]{problems} problem(s)[/red]", highlight=False)
    else:
        out.print("[green]ok[/green]: every chain is intact", highlight=False)


@app.command("verify")
def verify_(
    region: Annotated[
        str,
        typer.Option(
            "--region", "-r", help="Region whose audit chains and edge group to read.", show_default=False
        ),
    ],
    topic: Annotated[
        str | None,
        typer.Option(
            "--topic", help="Audit topic to read instead of the region's (a copy).", show_default=False
        ),
    ] = None,
    bootstrap: Bootstrap = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object, no tables.")] = False,
    timeout_ms: Annotated[
        int,
        typer.Option(
            "--timeout-ms", min=1, help="Bound on reading the topic to its end and on each request."
        ),
    ] = DEFAULT_TIMEOUT_MS,
) -> None:
    """Verify the hash chains of a region's audit records against the committed chain heads.

    Reads the edge group's committed heads, then the audit topic from the beginning to its end
    (read_committed, no consumer group). Reports missing records (gaps, and a tail cut off before the
    committed head), altered or replaced records (breaks), forks, with their audit positions. Exits 1
    when anything is wrong.
    """
    found, report = _run(verify_audit_log(_bootstrap(bootstrap), region, topic=topic, timeout_ms=timeout_ms))
    if as_json:
        typer.echo(json.dumps(_as_json(found, report)))
    else:
        _print(found, report)
    if not report.ok or found.bad_heads:
        raise typer.Exit(EXIT_PROBLEMS)
