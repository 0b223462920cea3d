"""The console report: the tables printed at the end of a run."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from rich.table import Table

from bench.pipeline.capacity import DrainRun
from bench.pipeline.ratios import ratio
from bench.pipeline.results import FloorPoint, Latency, Level, RunStats


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _marks(run: RunStats) -> str:
    return (
        ("*" if run.saturated else "")
        + ("!" if run.fleet_behind else "")
        + ("?" if run.disturbed else "")
        + ("#" if run.stalled else "")
    )


_MARKS_NOTE = (
    "* saturated (answered < 99% or backlog), ! the fleet could not send the offered load, "
    "? other processes used > 10% of a core meanwhile, # stalled (>= 1% of requests waited together over "
    "stall_ms with no answer arriving)"
)
"""What the marks after a number mean."""


def _system_columns(table: Table, systems: Sequence[str]) -> None:
    table.add_column("offered\n/s", justify="right")
    for system in systems:
        table.add_column(system.replace("_", "\n"), justify="right")


def summary_table(levels: Sequence[Level], systems: Sequence[str]) -> Table:
    """Per load: each system's end-to-end p99, the pipeline's p50 and its p99 over the
    non-transactional echo's."""
    table = Table(title=f"device round trip p99, ms; {_MARKS_NOTE}", title_justify="left")
    _system_columns(table, systems)
    for col in ("pipe\np50", "pipe p99\nx echo_alo"):
        table.add_column(col, justify="right")
    for lv in levels:
        cells = []
        for system in systems:
            run = lv.run_of(system)
            cells.append("-" if run is None else fmt(run.latency.p99_ms) + _marks(run))
        r = lv.ratios
        table.add_row(
            f"{lv.offered_per_s:g}",
            *cells,
            fmt(lv.pipeline.run.latency.p50_ms),
            fmt(r.p99_vs_echo_alo if r else None, ".2f"),
        )
    return table


def throughput_table(levels: Sequence[Level], systems: Sequence[str]) -> Table:
    """Per load: each system's answered items/s, the pipeline's mean batch and inference share."""
    table = Table(title=f"answered items/s; {_MARKS_NOTE}", title_justify="left")
    _system_columns(table, systems)
    for col in ("mean\nbatch", "infer\n% p50"):
        table.add_column(col, justify="right")
    for lv in levels:
        cells = []
        for system in systems:
            run = lv.run_of(system)
            cells.append("-" if run is None else fmt(run.items_per_s, ".0f") + _marks(run))
        r = lv.ratios
        share = None if r is None or r.infer_share_per_item is None else 100 * r.infer_share_per_item
        table.add_row(f"{lv.offered_per_s:g}", *cells, fmt(lv.pipeline.mean_batch), fmt(share, ".2f"))
    return table


def cpu_table(levels: Sequence[Level], systems: Sequence[str], idle: Mapping[str, float] | None) -> Table:
    """CPU ms per request of the far side, the broker and the fleet, per load and system (from /proc)."""
    idle_text = (
        "-" if idle is None else ", ".join(f"{role} {100 * share:.1f}%" for role, share in idle.items())
    )
    table = Table(
        title=f"CPU ms per request sent: far side / broker / fleet; idle, share of a core: {idle_text}",
        title_justify="left",
    )
    table.add_column("offered/s", justify="right")
    for system in systems:
        table.add_column(system, justify="right")
    for lv in levels:
        cells = []
        for system in systems:
            run = lv.run_of(system)
            cpu = None if run is None else run.cpu_ms_per_request
            cells.append(
                "-"
                if cpu is None
                else " / ".join(fmt(cpu.get(r), ".2f") for r in ("worker", "broker", "fleet"))
            )
        table.add_row(f"{lv.offered_per_s:g}", *cells)
    return table


def breakdown_table(levels: Sequence[Level]) -> Table:
    table = Table(title="where a pipeline request's time goes, ms p50 / p99", title_justify="left")
    for col in ("offered/s", "to worker", "batch wait", "infer (worker)", "to device", "end to end"):
        table.add_column(col, justify="right")

    def cell(lat: Latency) -> str:
        return f"{fmt(lat.p50_ms)} / {fmt(lat.p99_ms)}"

    for lv in levels:
        b = lv.pipeline.breakdown
        table.add_row(
            f"{lv.offered_per_s:g}",
            cell(b.to_worker),
            cell(b.batch_wait),
            cell(b.infer),
            cell(b.to_device),
            cell(lv.pipeline.run.latency),
        )
    return table


def floor_table(floor: Mapping[str, Sequence[FloorPoint]], shown: Iterable[int]) -> Table:
    table = Table(title="bare onnxruntime (µs)", title_justify="left")
    for col in ("model", "batch", "min/batch", "median/batch", "min/item", "median/item"):
        table.add_column(col, justify="left" if col == "model" else "right")
    wanted = set(shown)
    for model, points in floor.items():
        for p in points:
            if p.batch in wanted:
                table.add_row(
                    model,
                    str(p.batch),
                    fmt(p.min_us),
                    fmt(p.median_us),
                    fmt(p.per_item_min_us, ".2f"),
                    fmt(p.per_item_median_us, ".2f"),
                )
    return table


def capacity_table(drains: Mapping[str, DrainRun]) -> Table:
    """Per system: its drain of the backlog (``capacity.py``): items/s, the pipeline's over it, the far
    side's main thread, CPU per item."""
    table = Table(
        title="capacity: a backlog drained with the fleet out of the way; ? disturbed, ~ not all answered",
        title_justify="left",
    )
    for col in (
        "system",
        "backlog",
        "items/s",
        "pipeline\nx this",
        "main thread\nrun / wait",
        "CPU ms/item\nfar / broker / fleet",
    ):
        table.add_column(col, justify="right")
    pipeline = drains.get("pipeline")
    for system, run in drains.items():
        cpu = run.cpu_ms_per_item or {}
        thread = run.far_side_main_thread
        mark = ("?" if run.disturbed else "") + ("" if run.complete else "~")
        table.add_row(
            system,
            f"{run.backlog:,}",
            fmt(run.items_per_s, ".0f") + mark,
            fmt(ratio(pipeline.items_per_s if pipeline else None, run.items_per_s), ".2f"),
            f"{thread['running']:.0%} / {thread['waiting_for_cpu']:.0%}",
            " / ".join(fmt(cpu.get(role), ".3f") for role in ("worker", "broker", "fleet")),
        )
    return table
