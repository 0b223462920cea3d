"""`edgestream models ...`: build the reference models into the local cache and list what is there."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rich.table import Table

    from edgestream.pipeline.models import ModelArtifact, ModelSpec

app = typer.Typer(
    help="Reference models: build (train + ONNX export) and list the local cache.", no_args_is_help=True
)

RootOption = Annotated[
    Path | None, typer.Option("--root", help="Model cache directory (default: .edgestream/models).")
]


def _store_root(root: Path | None) -> Path:
    from edgestream.pipeline.settings import DEFAULT_HOME

    return root if root is not None else DEFAULT_HOME / "models"


@app.command("build")
def build(
    force: Annotated[
        bool, typer.Option("--force", help="Rebuild even when a verified cached copy exists.")
    ] = False,
    root: RootOption = None,
) -> None:
    """Build every family in every size (cached ones are verified and reused), then show a table."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from edgestream.pipeline.models import SPECS, ModelStore

    store = ModelStore(_store_root(root))
    console = Console()
    rows: list[tuple[ModelArtifact, str, float]] = []
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("models", total=len(SPECS))
        for name, size in SPECS:
            progress.update(task, description=f"{name}/{size}")
            reused = not force and store.cached(name, size) is not None
            started_s = time.perf_counter()
            artifact = store.get(name, size, rebuild=force)
            rows.append((artifact, "cached" if reused else "built", time.perf_counter() - started_s))
            progress.advance(task)
        progress.update(task, description="models")

    table = _table(store.root, ("source", "time s"))
    for artifact, source, elapsed_s in rows:
        table.add_row(*_artifact_cells(store.root, artifact.spec, artifact), source, f"{elapsed_s:.2f}")
    console.print(table)


@app.command("list")
def list_models(root: RootOption = None) -> None:
    """Show every model of the zoo, its input spec, and its verified cached artifact if any."""
    from rich.console import Console

    from edgestream.pipeline.models import ModelStore

    store = ModelStore(_store_root(root))
    table = _table(store.root, ("input",))
    for model_spec, artifact in store.entries():
        shape = ",".join(str(dim) for dim in model_spec.input_shape)
        input_cell = f"{model_spec.input_dtype} [N,{shape}]"
        table.add_row(*_artifact_cells(store.root, model_spec, artifact), input_cell)
    Console().print(table)


def _table(root: Path, extra: tuple[str, ...]) -> Table:
    from rich.table import Table

    table = Table(title=f"reference models in {root}", title_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("size", no_wrap=True)
    table.add_column("acc onnx/sklearn", justify="right")
    table.add_column("bytes", justify="right")
    table.add_column("sha256", no_wrap=True)
    table.add_column("path (under root)", overflow="fold")
    for column in extra:
        table.add_column(column)
    return table


def _artifact_cells(root: Path, model_spec: ModelSpec, artifact: ModelArtifact | None) -> tuple[str, ...]:
    if artifact is None:
        return (model_spec.name, model_spec.size, "-", "-", "not built", "-")
    return (
        artifact.name,
        artifact.size,
        f"{artifact.accuracy:.4f}/{artifact.sklearn_accuracy:.4f}",
        str(artifact.path.stat().st_size),
        artifact.sha256[:12],
        str(artifact.path.relative_to(root)),
    )
