"""The console report: the tables printed at the end of a run."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from rich.table import Table

from bench.pipeline.results import FloorPoint, Latency, Level, RunStats


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _marks(run: RunStats) -> str:
    return ("*" if run.saturated else "") + ("!" if run.fleet_behind else "") + ("?" if run.disturbed else "")


def summary_table(levels: Sequence[Level]) -> Table:
    table = Table(
        title="pipeline vs echo floor (two Kafka hops), latency ms; "
        "* saturated (answered < 99% or backlog), ! the fleet could not send the offered load, "
        "? other processes used > 10% of a core meanwhile",
        title_justify="left",
    )
    columns = (
        "offered\n/s",
        "pipe\nitems/s",
        "pipe\np50",
        "pipe\np99",
        "mean\nbatch",
        "echo\nitems/s",
        "echo\np50",
        "echo\np99",
        "1-hop\np50",
        "p50\nx echo",
        "p99\nx echo",
        "infer\n% p50",
    )
    for col in columns:
        table.add_column(col, justify="right")
    for lv in levels:
        p, e, r = lv.pipeline.run, lv.echo.run, lv.ratios
        share = None if r is None or r.infer_share_per_item is None else 100 * r.infer_share_per_item
        table.add_row(
            f"{lv.offered_per_s:g}",
            fmt(p.items_per_s, ".0f") + _marks(p),
            fmt(p.latency.p50_ms),
            fmt(p.latency.p99_ms),
            fmt(lv.pipeline.mean_batch),
            fmt(e.items_per_s, ".0f") + _marks(e),
            fmt(e.latency.p50_ms),
            fmt(e.latency.p99_ms),
            fmt(lv.echo.one_hop.p50_ms),
            fmt(r.p50_vs_echo if r else None, ".2f"),
            fmt(r.p99_vs_echo if r else None, ".2f"),
            fmt(share, ".2f"),
        )
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
