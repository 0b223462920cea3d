"""The pipeline beside the other systems, as numbers: per-load ratios, the highest load each system
sustains, and the peer's comparison. Pure: levels in, plain values out."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from bench.peers.settings import QUIX_DEFAULT_COMMIT_INTERVAL_S, Guarantee
from bench.pipeline.floor import batch_us_at
from bench.pipeline.results import FloorPoint, Level, LevelRatios, RunStats

T = TypeVar("T")
"""What a per-load table holds."""

PEER_SYSTEMS: dict[Guarantee, str] = {"at_least_once": "peer_alo", "exactly_once": "peer_eos"}
"""The peer's system name under each guarantee."""


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b; None when either is missing or b is 0."""
    return a / b if a is not None and b else None


@dataclass(frozen=True, slots=True)
class Sustained:
    """The highest offered load a system sustained: >= 99% answered and no backlog left."""

    offered_per_s: float
    items_per_s: float
    """Answered items/s at that load (what the ratios compare)."""
    at_highest_load: bool
    """It was the highest load measured: the system's limit may lie above it."""


def sustained(offered: Sequence[float], runs: Sequence[RunStats | None]) -> Sustained | None:
    """The highest of ``offered`` whose run (same order; None: not run) was not saturated; None when
    no run was sustained."""
    best = None
    for load, run in zip(offered, runs, strict=True):
        if run is not None and not run.saturated and (best is None or load > best[0]):
            best = (load, run.items_per_s)
    if best is None:
        return None
    return Sustained(best[0], best[1], best[0] >= max(offered))


def load_key(level: Level) -> str:
    """A level's offered load as a JSON key (``"1000"``)."""
    return f"{level.offered_per_s:g}"


def per_load(levels: Sequence[Level], get: Callable[[Level], T]) -> dict[str, T]:
    """``get`` of every level, by offered load."""
    return {load_key(lv): get(lv) for lv in levels}


def p99_of(level: Level, system: str) -> float | None:
    """``system``'s end-to-end p99 at ``level``; None when it did not run or answered nothing."""
    run = level.run_of(system)
    return None if run is None else run.latency.p99_ms


def items_of(level: Level, system: str) -> float | None:
    """``system``'s answered items/s at ``level``; None when it did not run."""
    run = level.run_of(system)
    return None if run is None else run.items_per_s


def sustained_of(levels: Sequence[Level], system: str) -> Sustained | None:
    """`sustained` for ``system`` over ``levels``."""
    return sustained([lv.offered_per_s for lv in levels], [lv.run_of(system) for lv in levels])


def level_ratios(level: Level, floor: Mapping[str, Sequence[FloorPoint]]) -> LevelRatios:
    """The pipeline beside the non-transactional echo and bare onnxruntime at one load."""
    pipe, echo = level.pipeline.run, level.echo_alo
    per_item_us = batch_run_us = None
    if level.pipeline.by_model:
        per_item_us = batch_run_us = 0.0
        for model, info in level.pipeline.by_model.items():
            at = batch_us_at(floor[model], info["mean_batch"])
            per_item_us += info["share"] * at / info["mean_batch"]
            batch_run_us += info["share"] * at
    p50_us = None if pipe.latency.p50_ms is None else pipe.latency.p50_ms * 1000.0
    return LevelRatios(
        p50_vs_echo_alo=ratio(pipe.latency.p50_ms, echo.run.latency.p50_ms if echo else None),
        p99_vs_echo_alo=ratio(pipe.latency.p99_ms, echo.run.latency.p99_ms if echo else None),
        items_per_s_vs_echo_alo=ratio(pipe.items_per_s, echo.run.items_per_s if echo else None),
        p50_vs_one_hop=ratio(pipe.latency.p50_ms, echo.one_hop.p50_ms if echo else None),
        infer_share_per_item=ratio(per_item_us, p50_us),
        infer_share_batch_run=ratio(batch_run_us, p50_us),
    )


def _sustained_json(value: Sustained | None) -> dict[str, Any] | None:
    return None if value is None else asdict(value)


def summary(levels: Sequence[Level], systems: Sequence[str]) -> dict[str, Any]:
    """``pipeline.json``'s ``ratios``: the device round trip beside the non-transactional echo."""
    top = levels[-1]

    def level_ratio(get: Callable[[LevelRatios], float | None]) -> dict[str, float | None]:
        return per_load(levels, lambda lv: get(lv.ratios) if lv.ratios else None)

    pipeline, echo = sustained_of(levels, "pipeline"), sustained_of(levels, "echo_alo")
    return {
        "highest_offered_per_s": top.offered_per_s,
        "device_p99_ms": per_load(levels, lambda lv: p99_of(lv, "pipeline")),
        "device_p99_vs_echo_alo": per_load(
            levels, lambda lv: ratio(p99_of(lv, "pipeline"), p99_of(lv, "echo_alo"))
        ),
        "sustained_vs_echo_alo": ratio(
            pipeline.items_per_s if pipeline else None, echo.items_per_s if echo else None
        ),
        "sustained": {system: _sustained_json(sustained_of(levels, system)) for system in systems},
        "items_per_s_vs_echo_alo_at_highest": top.ratios.items_per_s_vs_echo_alo if top.ratios else None,
        "p50_vs_echo_alo": level_ratio(lambda r: r.p50_vs_echo_alo),
        "p99_vs_echo_alo": level_ratio(lambda r: r.p99_vs_echo_alo),
        "infer_share_per_item": level_ratio(lambda r: r.infer_share_per_item),
        "infer_share_batch_run": level_ratio(lambda r: r.infer_share_batch_run),
        "stalled": {
            load_key(lv): stalled
            for lv in levels
            if (stalled := [s for s in systems if (run := lv.run_of(s)) is not None and run.stalled])
        },
    }


def _worker_cpu_ms(level: Level, system: str) -> float | None:
    run = level.run_of(system)
    cpu = None if run is None else run.cpu_ms_per_request
    return None if cpu is None else cpu.get("worker")


def tracing_summary(levels: Sequence[Level], sample_ratio: float) -> dict[str, Any] | None:
    """``pipeline.json``'s ``tracing``: the pipeline traced (``on``: devices and worker exporting to
    files) beside it untraced (``off``). ``items_per_s_ratio``: sustained items/s, on / off; per load,
    items/s, p99 and the worker's CPU ms per request, on and off, and their ratios. None when the
    traced pipeline did not run."""
    if not any(lv.pipeline_traced is not None for lv in levels):
        return None
    on, off = sustained_of(levels, "pipeline_traced"), sustained_of(levels, "pipeline")

    def both(get: Callable[[Level, str], float | None]) -> dict[str, dict[str, float | None]]:
        return per_load(
            levels,
            lambda lv: {
                "on": get(lv, "pipeline_traced"),
                "off": get(lv, "pipeline"),
                "ratio": ratio(get(lv, "pipeline_traced"), get(lv, "pipeline")),
            },
        )

    return {
        "exporter": "file",
        "sample_ratio": sample_ratio,
        "items_per_s_ratio": ratio(on.items_per_s if on else None, off.items_per_s if off else None),
        "sustained": {"on": _sustained_json(on), "off": _sustained_json(off)},
        "items_per_s": both(items_of),
        "p99_ms": both(p99_of),
        "worker_cpu_ms_per_request": both(_worker_cpu_ms),
        "spans": per_load(levels, lambda lv: lv.pipeline_traced.spans if lv.pipeline_traced else None),
    }


def _peer_entry(
    levels: Sequence[Level], system: str, pipeline: Sustained | None, interval_s: float | None
) -> dict[str, Any]:
    peer = sustained_of(levels, system)
    return {
        "commit_interval_s": QUIX_DEFAULT_COMMIT_INTERVAL_S if interval_s is None else interval_s,
        "items_per_s": per_load(levels, lambda lv: items_of(lv, system)),
        "p99_ms": per_load(levels, lambda lv: p99_of(lv, system)),
        "sustained": _sustained_json(peer),
        "items_per_s_ratio": ratio(
            pipeline.items_per_s if pipeline else None, peer.items_per_s if peer else None
        ),
        "p99_ratio": per_load(levels, lambda lv: ratio(p99_of(lv, "pipeline"), p99_of(lv, system))),
    }


def peer_summary(
    levels: Sequence[Level],
    name: str,
    pipeline_delivery: str,
    commit_intervals_s: Mapping[Guarantee, float | None],
) -> dict[str, Any]:
    """``pipeline.json``'s ``peer``: per guarantee its commit interval, items/s and p99 per load, the
    highest load it sustained, and the pipeline's over its: ``items_per_s_ratio`` (sustained items/s,
    pipeline / peer) and ``p99_ratio`` (per load, pipeline / peer). A guarantee that did not run: None."""
    pipeline = sustained_of(levels, "pipeline")
    document: dict[str, Any] = {"name": name, "pipeline_delivery": pipeline_delivery}
    for guarantee, system in PEER_SYSTEMS.items():
        ran = any(lv.run_of(system) is not None for lv in levels)
        document[guarantee] = (
            _peer_entry(levels, system, pipeline, commit_intervals_s.get(guarantee)) if ran else None
        )
    return document
