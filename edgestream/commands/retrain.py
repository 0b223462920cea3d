"""`edgestream retrain MODEL`: train a candidate from the labelled samples of a window, compare it with
the stable version on a held-out split, and publish it (signed, with metrics and lineage) as the next
version, NOT promoted: ``edgestream registry promote`` runs its canary. ``--export FILE`` writes the
window's labelled samples to a file instead, for a model edgestream did not build (its team trains it
and publishes the result as a candidate: ``docs/retraining.md``).

Reading and publishing are ``workers.retrainer``, training and the comparison
``pipeline.learning.retrain``; the command parses the window and prints the report."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from edgestream.commands.common import fail, run, utc
from edgestream.commands.keys import parse_duration_ms
from edgestream.commands.registry import SIGNING_KEY_FILE, TRUSTED_KEYS_FILE, Home, ModelName
from edgestream.commands.topics import Bootstrap

if TYPE_CHECKING:
    from edgestream.pipeline.learning.retrain import RetrainReport
    from edgestream.pipeline.registry.state import ModelState
    from edgestream.pipeline.settings import KafkaSettings

app = typer.Typer(
    help="Retrain a model from labelled samples and publish it as a candidate.",
    context_settings={"allow_interspersed_args": True},  # MODEL then options: one command, not a group
)

_out = Console()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EXPORT_HELP = (
    "Write the window's labelled samples to this .npz or .csv file for your own training job (any "
    "model, docs/retraining.md); train and publish nothing."
)
"""Help of ``--export``."""


def parse_when_ms(text: str, now_ms: int) -> int:
    """``now``, a duration ago (``10m``, ``2h``, ``1d``) or an ISO 8601 time (UTC when it names no zone),
    as unix ms. Raises BadParameter."""
    text = text.strip()
    if text == "now":
        return now_ms
    if text and text[-1].isalpha() and not text.endswith(("Z", "z")):
        return now_ms - parse_duration_ms(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError as e:
        raise typer.BadParameter(f"{text!r} is not now, a duration like 10m or an ISO time") from e
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - _EPOCH) // timedelta(milliseconds=1)


@app.callback(invoke_without_command=True)
def retrain(
    model: ModelName,
    since: Annotated[
        str, typer.Option("--since", help="Window start: a duration ago (10m, 2h, 1d) or an ISO time.")
    ] = "1d",
    until: Annotated[
        str, typer.Option("--until", help="Window end (excluded): now, a duration ago or ISO.")
    ] = "now",
    holdout: Annotated[
        float, typer.Option("--holdout", min=0.05, max=0.95, help="Share of the samples held out.")
    ] = 0.3,
    min_samples: Annotated[
        int, typer.Option("--min-samples", min=1, help="Refuse with fewer labelled samples than this.")
    ] = 200,
    seed: Annotated[
        int,
        typer.Option("--seed", help="Seed of the held-out split (training is seeded by the zoo's seed)."),
    ] = 0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Train and compare, publish nothing.")] = False,
    export: Annotated[Path | None, typer.Option("--export", help=EXPORT_HELP, dir_okay=False)] = None,
    home: Home = None,
    bootstrap: Bootstrap = None,
) -> None:
    """Train MODEL on the labelled samples of [--since, --until), compare it with the stable version on a
    held-out split and publish it as the next version, a candidate (not promoted). With --export FILE:
    write those samples to FILE for your own training job instead (any model; trains and publishes
    nothing; the training options are ignored)."""
    from edgestream.commands.registry import artifact_store, registry_home
    from edgestream.commands.topics import resolve_kafka
    from edgestream.pipeline.errors import EdgestreamError
    from edgestream.pipeline.learning.retrain import retrain as retrain_model
    from edgestream.pipeline.registry.signing import SigningKey, TrustedKeys
    from edgestream.workers.retrainer import Stable, publish_candidate, read_labelled, read_stable

    now_ms = time.time_ns() // 1_000_000
    since_ms, until_ms = parse_when_ms(since, now_ms), parse_when_ms(until, now_ms)
    if until_ms <= since_ms:
        fail(f"empty window: --until {until!r} is not after --since {since!r}")
    kafka = resolve_kafka(bootstrap)
    if export is not None:
        _export(kafka, model, since_ms, until_ms, export)
        return
    root = registry_home(home)
    store = artifact_store(root)
    try:
        trusted = TrustedKeys.load(root / TRUSTED_KEYS_FILE)
        key = None if dry_run else SigningKey.load(root / SIGNING_KEY_FILE)
    except EdgestreamError as e:
        fail(str(e))
    stable: Stable = run(read_stable(kafka, store, trusted, model))
    data = run(read_labelled(kafka, model, since_ms, until_ms))
    if data.joined < min_samples:
        fail(
            f"{model}: {data.joined} labelled samples in [{utc(since_ms)}, {utc(until_ms)}) "
            f"({data.samples} samples, {data.labels} labels), fewer than --min-samples {min_samples}"
        )
    try:
        report, candidate = retrain_model(
            data, stable.spec.size, stable.version, stable.onnx_bytes, holdout_fraction=holdout, seed=seed
        )
    except EdgestreamError as e:
        fail(str(e))
    _out.print(_table(report))
    if key is None:
        _out.print("dry run: nothing published")
        return
    published: ModelState = run(publish_candidate(kafka, store, key, stable.spec, report, candidate, trusted))
    _out.print(
        f"published {model} v{published.latest} (candidate, parent v{report.stable_version}): "
        f"holdout accuracy {report.candidate_accuracy:.4f} vs {report.stable_accuracy:.4f}, "
        f"signed by {key.key_id}; to roll it out: "
        f"edgestream registry promote {model} --version {published.latest}"
    )


def _export(kafka: KafkaSettings, model: str, since_ms: int, until_ms: int, path: Path) -> None:
    """Write the labelled samples of ``model`` in ``[since_ms, until_ms)`` to ``path``
    (``pipeline.learning.export``); fail, writing nothing, when there are none."""
    from edgestream.pipeline.learning.export import ExportError, export_format, write_export
    from edgestream.workers.retrainer import read_export

    try:
        export_format(path)  # a suffix that names no format fails before Kafka is read
    except ExportError as e:
        fail(str(e))
    table = run(read_export(kafka, model, since_ms, until_ms))
    window = f"[{utc(since_ms)}, {utc(until_ms)})"
    if table.rows == 0:
        fail(
            f"{model}: no labelled samples in {window} ({table.samples} samples, {table.labels} labels, "
            f"{table.skipped} skipped): nothing exported, {path} not written"
        )
    try:
        write_export(path, table)
    except (ExportError, OSError) as e:
        fail(str(e))
    skipped = f", {table.skipped} records skipped (see the log)" if table.skipped else ""
    _out.print(
        f"exported {table.rows} labelled samples of {model} in {window} to {path}: "
        f"{table.n_features} features, versions {sorted(set(table.version.tolist()))} "
        f"({table.samples} samples in the window, {table.labels} labels{skipped})",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def _table(report: RetrainReport) -> Table:
    table = Table(title=f"retrain {report.model} ({report.variant})", title_justify="left")
    table.add_column("")
    table.add_column("value", justify="right")
    rows = [
        ("window", f"{utc(report.window.since_ms)} .. {utc(report.window.until_ms)}"),
        ("samples", str(report.samples)),
        ("labels", str(report.labels)),
        ("joined", str(report.joined)),
        ("distinct inputs", str(report.distinct)),
        ("train / holdout", f"{report.train_size} / {report.holdout_size}"),
        ("candidate accuracy", f"{report.candidate_accuracy:.4f}"),
        ("candidate sklearn accuracy", f"{report.candidate_sklearn_accuracy:.4f}"),
        (f"stable v{report.stable_version} accuracy", f"{report.stable_accuracy:.4f}"),
        ("margin", f"{report.margin:+.4f}"),
        ("converged", "yes" if report.converged else "no"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table
