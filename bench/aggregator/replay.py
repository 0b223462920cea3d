"""The aggregator's per-record work and its drift judgement, replayed at the demo's rate on one asyncio
loop without faust or a broker, so that two ways of getting thresholds run side by side in one process.

The stream is the demo's (``workers/local/demo_settings.py``): 150 requests/s over three regions, half
embeddings (the held-out rows the devices replay, then rows of the shifted pool from ``shift_s`` on),
half frames, a sample per embedding request (frames are never sampled) and a label per request, a
partial summary per (region, model) a second, 15 s windows. Each record goes through what the app's
agents do to it (``app.py``: decode, the summary window, the re-keying hop's decode, ``_Join.apply``
with its bins), with tables that serialise each value they are given as faust serialises a changelog
record (JSON; the produce itself is not emulated). Every ``flag_interval_s`` the view's rows are judged
(the flag-count timer). Two modes: ``before`` (thresholds simulated on the loop by
``calibration.threshold``, and the per-record steps of ``before.py``) and ``after`` (today's code:
``workers/aggregator/thresholds.py`` off the loop, in its own process, the one-comparison ``bins_of``,
the nesting check that skips scalars); ``after_thread`` is ``after`` with the simulations on a thread
of the process instead (the choice the app did not make). A probe on the loop measures its lag."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Final, Literal

import numpy as np

from bench.aggregator import before
from edgestream.pipeline.contract.cloud import Label, PartialSummary, Sample
from edgestream.pipeline.learning import calibration
from edgestream.pipeline.learning.drift import FeatureReference, ThresholdFn
from edgestream.pipeline.models import load_dataset
from edgestream.pipeline.models.shift import shifted_pools
from edgestream.workers.aggregator import windows as w
from edgestream.workers.aggregator.app import PARTITIONS, AggregatorSettings, _Join, _Tables
from edgestream.workers.aggregator.references import kind_reference
from edgestream.workers.aggregator.thresholds import Thresholds
from edgestream.workers.aggregator.view import frozen_summaries, joined_rows

Mode = Literal["before", "after", "after_thread"]
"""How the view gets its thresholds."""
MODES: Final[tuple[Mode, ...]] = ("before", "after", "after_thread")
REGIONS: Final = ("eu-west", "us-east", "ap-south")
"""The demo's regions."""
MODELS: Final = ("embedding-scorer", "frame-classifier")
"""The demo's models (samples of frames carry no features)."""
PROBE_S: Final = 0.01
"""How often the lag probe wakes."""
Rows = list[dict[str, Any]]
"""The view's rows."""
TICK_S: Final = 0.02
"""How often the feeder hands the records now due to the agents."""


@dataclass(frozen=True, slots=True)
class Setting:
    """One replay's shape (the demo's defaults)."""

    duration_s: float = 60.0
    rate_per_s: float = 150.0
    window_s: float = 15.0
    shift_s: float = 20.0
    flag_interval_s: float = 10.0
    source_rows: int = 143


@dataclass(slots=True)
class Measured:
    """What one replay measured."""

    mode: Mode
    records: int = 0
    process_cpu_s: float = 0.0
    """CPU of the process, the simulation process included."""
    loop_cpu_s: float = 0.0
    lags_ms: list[float] = field(default_factory=list)
    judge_loop_cpu_s: list[float] = field(default_factory=list)
    """Loop CPU of each judgement of the rows (the flag-count timer)."""
    first_flag_after_shift_s: float | None = None
    simulations: int = 0
    """Thresholds simulated (either thread)."""
    flags: dict[str, tuple[bool, int, int]] = field(default_factory=dict)
    """Window key -> (flagged, feature samples, scores counted), as last judged (the decisions compared
    between modes where the counts are the same)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the derived figures."""
        lags = np.asarray(self.lags_ms or [0.0])
        return {
            "mode": self.mode,
            "records": self.records,
            "process_cpu_s": round(self.process_cpu_s, 3),
            "loop_cpu_s": round(self.loop_cpu_s, 3),
            "process_cpu_ms_per_record": round(1000 * self.process_cpu_s / max(1, self.records), 4),
            "loop_cpu_ms_per_record": round(1000 * self.loop_cpu_s / max(1, self.records), 4),
            "loop_lag_ms": {
                "max": round(float(lags.max()), 1),
                "p99": round(float(np.percentile(lags, 99)), 1),
                "p50": round(float(np.percentile(lags, 50)), 2),
            },
            "judge_loop_cpu_s": [round(v, 3) for v in self.judge_loop_cpu_s],
            "first_flag_after_shift_s": self.first_flag_after_shift_s,
            "simulations": self.simulations,
            "flags": _by_ordinal(self.flags),
        }


def _by_ordinal(flags: dict[str, tuple[bool, int, int]]) -> dict[str, tuple[bool, int, int]]:
    """``flags`` keyed ``<region>/<model>/<version>#<i>``, the i-th window of the run (runs are stamped
    from their own start, so their window keys differ)."""
    starts = sorted({w.parse_window_key(k)[3] for k in flags})
    return {f"{k.rpartition('@')[0]}#{starts.index(w.parse_window_key(k)[3])}": v for k, v in flags.items()}


class _ChangelogTable(dict[str, Any]):
    """A table that serialises each value set, as faust does for its changelog record."""

    def __setitem__(self, key: str, value: Any) -> None:
        json.dumps(value).encode()
        super().__setitem__(key, value)


def records(setting: Setting, t0: int, seed: int = 1) -> list[tuple[float, str, bytes]]:
    """(offset from the start in s, topic, record) of the whole replay, in time order, stamped from
    ``t0`` (unix ms: the agents expire what is older than their retention by the wall clock)."""
    rng = np.random.default_rng(seed)
    held_out = load_dataset("embedding").X_test
    shifted = shifted_pools()[0].X
    out: list[tuple[float, str, bytes]] = []
    n = int(setting.duration_s * setting.rate_per_s)
    for i in range(n):
        at_s = i / setting.rate_per_s
        region, model = REGIONS[i % len(REGIONS)], MODELS[(i // len(REGIONS)) % len(MODELS)]
        rid = os.urandom(16)
        at_ms = t0 + int(at_s * 1000)
        label = int(rng.integers(0, 2))
        if model == MODELS[0]:  # frames are never sampled
            pool = held_out if at_s < setting.shift_s else shifted
            features = tuple(float(x) for x in pool[rng.integers(0, len(pool))])
            sample = Sample(rid, region, model, 1, at_ms, b"d" * 16, features, label, (0.3, 0.7))
            out.append((at_s, "samples", sample.to_bytes()))
        out.append((at_s + 0.05, "labels", Label(rid, model, label, at_ms + 50).to_bytes()))
    for second in range(int(setting.duration_s)):
        for region in REGIONS:
            for model in MODELS:
                summary = PartialSummary(region, "n", model, 1, t0 + second * 1000)
                for score in rng.beta(6, 2, int(setting.rate_per_s / 6)):
                    summary.add_result(0, float(score), 20.0)
                out.append((second + 0.99, "summaries", summary.to_bytes()))
    out.sort(key=lambda r: r[0])
    return out


class _Agents:
    """What the app's agents do per record, over changelog-serialising tables."""

    def __init__(self, setting: Setting, mode: Mode = "after") -> None:
        self._bins_of = before.bins_of if mode == "before" else FeatureReference.bins_of
        settings = AggregatorSettings(window_s=setting.window_s)
        self.tables = _Tables(_ChangelogTable(), _ChangelogTable(), _ChangelogTable())
        self._join = _Join(settings, self.tables)
        self._window_ms = settings.window_ms
        self._offsets: dict[str, int] = {}

    def _event(self, topic: str, raw: bytes, key: bytes = b"\0") -> Any:
        """The faust event of ``raw`` on the partition its key hashes to (as the app's topics are)."""
        partition = key[0] % PARTITIONS
        source = f"{topic}:{partition}"
        offset = self._offsets[source] = self._offsets.get(source, -1) + 1
        message = SimpleNamespace(topic=topic, partition=partition, offset=offset)
        return SimpleNamespace(value=raw, message=message)

    def handle(self, topic: str, raw: bytes) -> int:
        """One record (and the re-keyed copy a sample becomes); returns the records handled."""
        if topic == "summaries":
            summary = PartialSummary.from_bytes(raw)
            event = self._event(topic, raw)
            start = w.window_start(summary.at_ms, self._window_ms)
            key = w.window_key(summary.region, summary.model, summary.model_version, start)
            state = self.tables.windows.get(key) or w.new_window(
                summary.region, summary.model, summary.model_version, start, self._window_ms
            )
            if not w.seen(state, topic, 0, event.message.offset):
                w.add_summary(state, summary)
                self.tables.windows[key] = state
            return 1
        if topic == "labels":
            label = Label.from_bytes(raw)
            self._join.apply(
                self._event(topic, raw, label.request_id),
                label.request_id,
                lambda s, o, fresh: w.add_label(s, label, o, fresh=fresh),
                [],
            )
            return 1
        Sample.from_bytes(raw)  # the re-keying hop decodes it once
        sample = Sample.from_bytes(raw)  # and the join once more
        reference = kind_reference(sample.model)
        bins, n_bins = None, []
        if reference is not None and len(sample.features) == reference.n_features:
            bins = self._bins_of(reference, sample.features)
            n_bins = [len(c) for c in reference.counts]
        self._join.apply(
            self._event("by-rid", raw, sample.request_id),
            sample.request_id,
            lambda s, o, fresh: w.add_sample(s, sample, o, self._window_ms, fresh=fresh, bins=bins),
            n_bins,
        )
        return 2


async def _probe(lags: list[float], stop: asyncio.Event) -> None:
    """The loop's lag: how late each ``PROBE_S`` sleep wakes."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        due = loop.time() + PROBE_S
        await asyncio.sleep(PROBE_S)
        lags.append(max(0.0, (loop.time() - due) * 1000))


async def _judged_rows(agents: _Agents, setting: Setting, thresholds: ThresholdFn) -> tuple[Rows, float]:
    """The view's rows now (as the app computes them) and the loop CPU their computing took."""
    windows = frozen_summaries(agents.tables.windows.items())
    joined = w.sum_quality(list(agents.tables.quality.items()))
    spent = [0.0]

    def rows() -> Rows:
        before = time.thread_time()
        try:
            return joined_rows(windows, joined, source_rows=setting.source_rows, thresholds=thresholds)
        finally:
            spent[0] += time.thread_time() - before

    judged = await thresholds.judged(rows) if isinstance(thresholds, Thresholds) else rows()
    return judged, spent[0]


async def _judge(
    agents: _Agents, setting: Setting, thresholds: ThresholdFn, measured: Measured, started: float
) -> None:
    """The flag-count timer: the view's rows judged every ``flag_interval_s`` (off the loop: as the app
    does, awaiting the thresholds they need)."""
    while True:
        await asyncio.sleep(setting.flag_interval_s)
        judged, spent = await _judged_rows(agents, setting, thresholds)
        measured.judge_loop_cpu_s.append(spent)
        for row in judged:
            scores = sum(row["scores"] or ())
            measured.flags[row["key"]] = (row["drift"]["flagged"], row["drift"]["samples"], scores)
            if row["drift"]["flagged"] and measured.first_flag_after_shift_s is None:
                measured.first_flag_after_shift_s = round(time.monotonic() - started - setting.shift_s, 1)


async def replay(mode: Mode, setting: Setting) -> Measured:
    """Feed the stream (``records``, stamped from now) at its own pace through the agents, in ``mode``."""
    stream = records(setting, int(time.time() * 1000) + 1_000)
    with before.old_depth_check() if mode == "before" else contextlib.nullcontext():
        return await _replay(mode, setting, stream)


async def _replay(mode: Mode, setting: Setting, stream: list[tuple[float, str, bytes]]) -> Measured:
    calibration.simulated_threshold.cache_clear()  # each mode simulates what it needs from scratch
    measured = Measured(mode)
    agents = _Agents(setting, mode)
    thresholds: ThresholdFn = calibration.threshold
    if mode != "before":
        thresholds = Thresholds(_thread if mode == "after_thread" else None)
    stop = asyncio.Event()
    cpu, loop_cpu = _cpu_with_children(), time.thread_time()
    started = time.monotonic()
    probe = asyncio.create_task(_probe(measured.lags_ms, stop))
    judge = asyncio.create_task(_judge(agents, setting, thresholds, measured, started))
    i = 0
    while i < len(stream):
        now = time.monotonic() - started
        while i < len(stream) and stream[i][0] <= now:
            measured.records += agents.handle(stream[i][1], stream[i][2])
            i += 1
            if i % 20 == 0:
                await asyncio.sleep(0)  # faust yields between events
        await asyncio.sleep(TICK_S)
    await asyncio.sleep(setting.flag_interval_s)  # one more judgement of the last windows
    stop.set()
    judge.cancel()
    await probe
    measured.loop_cpu_s = time.thread_time() - loop_cpu
    measured.simulations = calibration.simulated_threshold.cache_info().misses
    if isinstance(thresholds, Thresholds):
        measured.simulations = thresholds.submitted
        thresholds.close()  # its process ends: its CPU is the children's
    measured.process_cpu_s = _cpu_with_children() - cpu
    return measured


def _thread() -> concurrent.futures.Executor:
    """The simulations on a thread of this process (what the app does not do: ``after_thread``)."""
    return concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="drift-thresholds")


def _cpu_with_children() -> float:
    """CPU seconds of this process and of its ended children (the simulation process, once closed)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system
