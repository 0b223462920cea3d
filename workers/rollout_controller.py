"""The rollout controller: judge a model's canary from the edge's partial summaries (and the labels),
and publish its next stage or its rollback on ``control.models``.

:class:`Controller` reads the registry state, ``cloud.summaries`` and (for accuracy) ``cloud.samples``
joined with ``cloud.labels``, asks ``pipeline.learning.rollout.judge`` and publishes the transition.
:class:`WorkerView` says which registry revision each worker serving a model has applied, so that a
stage never advances while a worker lags (at most one revision of drift): the workers' reports on
``control.workers`` (``pipeline.registry.reports.TopicWorkerView``) or their stats files
(:class:`FileWorkerView`).

The controller signs every state it publishes with the registry key (``signer``) and, given the trusted
keys, judges only a state it can verify. It reads records other principals write: a summary, sample or
label that does not parse (a non-finite or negative count, a wrong type, any bytes) is skipped, logged
and counted in :attr:`Controller.skipped`; it never stops the controller.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Generic, Protocol, TypeVar

from edgestream.pipeline.contract.cloud import READ_MARGIN_MS, Label, PartialSummary, Sample
from edgestream.pipeline.errors import UndecodableRecord
from edgestream.pipeline.learning.rollout import (
    Bounds,
    Verdict,
    accuracy_by_version,
    error_reasons,
    judge,
    stage_started_ms,
    version_stats,
)
from edgestream.pipeline.observability.cloud import RolloutMetrics
from edgestream.pipeline.registry.errors import RegistryError
from edgestream.pipeline.registry.state import ModelState, advance, rollback
from edgestream.topics.catalogue import LABELS_TOPIC, SAMPLES_TOPIC, SUMMARIES_TOPIC

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

    from edgestream.pipeline.registry.signing import SigningKey, TrustedKeys
    from edgestream.pipeline.settings import KafkaSettings

log = logging.getLogger(__name__)

T = TypeVar("T")


# -- which revision each worker serves -------------------------------------------------------------


class WorkerView(Protocol):
    """Which registry revision each worker serving a model has applied: the workers' reports on
    ``control.workers`` (``pipeline.registry.workers.TopicWorkerView``, any number of hosts), or their
    stats files on one host (:class:`FileWorkerView`)."""

    async def revisions(self, model: str) -> list[int | None]:
        """One entry per live worker serving ``model``: its applied revision, None if it has none."""
        ...


STATS_REVISIONS_KEY: Final = "registry_revisions"
"""Key of a worker stats file holding ``{model: applied revision or null}``."""


class FileWorkerView:
    """Workers' stats files (``WorkerSettings.stats_file``, JSON) in one directory: one host or a shared
    volume. Across hosts, the workers' reports on ``control.workers`` say the same
    (``pipeline.registry.workers.TopicWorkerView``).

    A file names a worker of ``model`` when its ``served_versions`` or ``registry_revisions`` has the
    model; its revision is ``registry_revisions[model]`` (None when absent: an old worker counts as
    lagging). Files not modified within ``max_age_s`` are ignored (a worker that stopped serves
    nothing); unreadable files are logged and ignored.
    """

    def __init__(self, directory: Path, *, pattern: str = "*.json", max_age_s: float = 60.0) -> None:
        self._directory = directory
        self._pattern = pattern
        self._max_age_s = max_age_s

    async def revisions(self, model: str) -> list[int | None]:
        """See :class:`WorkerView`."""
        now = time.time()
        out: list[int | None] = []
        for path in sorted(self._directory.glob(self._pattern)):
            try:
                if now - path.stat().st_mtime > self._max_age_s:
                    continue
                stats = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                log.warning("ignoring worker stats %s: %s", path, e)
                continue
            if not isinstance(stats, dict):
                continue
            revisions = stats.get(STATS_REVISIONS_KEY) or {}
            served = stats.get("served_versions") or {}
            if not isinstance(revisions, dict) or not isinstance(served, dict):
                log.warning("ignoring worker stats %s: not a worker's stats file", path)
                continue
            if model not in revisions and model not in served:
                continue
            revision = revisions.get(model)
            out.append(revision if isinstance(revision, int) else None)
        return out


# -- the controller --------------------------------------------------------------------------------

_CLIENT_ID: Final = "edgestream-rollout"


class Controller:
    """Judges a model's canary from ``cloud.summaries`` (and, for accuracy, ``cloud.samples`` joined
    with ``cloud.labels``) and publishes ``advance`` or ``rollback`` on ``control.models``.

    Run it from one place (the registry has no compare-and-set): it re-reads the state before each step
    and publishes only a transition of the revision it judged.

    It keeps one consumer per topic it reads (the registry's states and each topic it judges from), and
    each step reads on from where the last one ended (a new canary, or another model, starts over at
    its start): a step's reads are the records written since the step before, not the canary's whole
    span again. :meth:`close` it (or use it as an
    async context manager) when done.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        bounds: Bounds,
        *,
        signer: SigningKey,
        trusted: TrustedKeys | None = None,
        workers: WorkerView | None = None,
        regions: frozenset[str] | None = None,
        labels: bool = True,
        timeout_ms: int = 30_000,
        clock_ms: Callable[[], int] | None = None,
        metrics: RolloutMetrics | None = None,
    ) -> None:
        """``signer``: the registry key that signs what it publishes; ``trusted``: judge only states
        signed by these keys (None: not checked). ``workers``: None disables the lag guard (tests, a
        single worker). ``regions``: judge only these regions' summaries (default all). ``labels``: read
        samples and labels for accuracy. ``metrics``: where it counts (a fresh registry by default)."""
        from edgestream.pipeline.registry.client import RegistryClient

        self._kafka = kafka
        self._registry = RegistryClient(
            kafka, timeout_ms=timeout_ms, signer=signer, trusted=trusted, kept=True
        )
        self.bounds = bounds
        self._workers = workers
        self._regions = regions
        self._labels = labels
        self._timeout_ms = timeout_ms
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self.skipped: dict[str, int] = {}
        """Records skipped because they do not parse, by topic (summaries, samples, labels)."""
        self.metrics = metrics or RolloutMetrics()
        """Stages, advances, rollbacks and the revision read (served on ``/metrics``)."""
        self._ready: tuple[bool, str] = (False, "no step yet")
        self.timings: dict[str, float] = {}
        """Seconds the last step spent reading, by part (state, summaries, samples, labels, workers)."""
        self.records_read: dict[str, int] = {}
        """Records the last step read, by topic part (summaries, samples, labels)."""
        self._tails: list[_Tail[Any]] = []
        self._summaries: _Tail[PartialSummary] = self._tail(SUMMARIES_TOPIC, PartialSummary.from_bytes)
        self._samples: _Tail[Sample] = self._tail(SAMPLES_TOPIC, Sample.from_bytes)
        self._labels_read: _Tail[Label] = self._tail(LABELS_TOPIC, Label.from_bytes)

    def _tail(self, topic: str, parse: Callable[[bytes], T]) -> _Tail[T]:
        tail = _Tail(self._kafka, topic, parse, timeout_ms=self._timeout_ms, skipped=self.skipped)
        self._tails.append(tail)
        return tail

    async def close(self) -> None:
        """Stop the consumers the steps kept open, every one even when one fails to stop (the worker
        view is its owner's to close)."""
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(self._registry.close)
            self._close_tails(stack)

    def _close_tails(self, stack: contextlib.AsyncExitStack) -> None:
        for tail in self._tails:
            stack.push_async_callback(tail.close)

    async def __aenter__(self) -> Controller:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def ready(self) -> tuple[bool, str]:
        """Ready while its last step read a registry state it can judge: (ready, reason)."""
        return self._ready

    def _observe(self, model: str, state: ModelState | RegistryError | None) -> None:
        """Readiness and the stage metrics after reading ``model``'s state."""
        self.metrics.watch(model)
        if isinstance(state, RegistryError):
            self._ready = (False, f"{model}'s registry state is refused: {state.reason}")
        else:
            self._ready = (True, "ok")
        self.metrics.set_ready(self._ready[0])
        if isinstance(state, ModelState):
            self.metrics.state(model, state.revision, stage_shares(state))

    async def _state(self, model: str) -> ModelState | RegistryError | None:
        """``model``'s state; the error that refuses it (unverifiable, malformed, not read in time)."""
        try:
            return await self._registry.read_state(model)
        except RegistryError as e:
            log.error("%s: registry state refused: %s (%s)", model, e.reason, e)
            return e

    async def step(self, model: str) -> Verdict:
        """Judge ``model``'s canary once and apply the verdict (``hold``: nothing published)."""
        self.timings = {}
        self.records_read = {}
        state = await self._timed("state", self._state(model))
        self._observe(model, state)
        if isinstance(state, RegistryError):
            return Verdict("hold", (f"{model}'s registry state is refused: {state.reason}",))
        if state is None or state.canary is None or state.stable is None:
            async with contextlib.AsyncExitStack() as stack:  # nothing to judge: idle tails fetch nothing
                self._close_tails(stack)
            return Verdict("hold", (f"{model} has no canary in progress",))
        canary = state.canary
        since = canary.started_at_ms
        summaries = [
            s
            for s in await self._timed(
                "summaries",
                self._read(
                    "summaries",
                    self._summaries,
                    (model, since),
                    lambda s: s.model == model and s.at_ms >= since,
                    since_ms=since,
                ),
            )
            if self._regions is None or s.region in self._regions
        ]
        accuracy: dict[int, tuple[int, int]] = {}
        if self._labels:
            samples = await self._timed(
                "samples",
                self._read(
                    "samples",
                    self._samples,
                    (model, since),
                    lambda s: (
                        s.model == model
                        and s.at_ms >= since
                        and (self._regions is None or s.region in self._regions)
                    ),
                    since_ms=since,
                ),
            )
            if samples:
                labels = await self._timed(
                    "labels",
                    self._read(
                        "labels",
                        self._labels_read,
                        (model, since),
                        lambda lb: lb.model == model,
                        since_ms=since,
                    ),
                )
                accuracy = accuracy_by_version(samples, labels, model, since_ms=since)
        now_ms = self._clock_ms()
        counted = error_reasons(state.manifest(state.stable), state.manifest(canary.version))
        stats = {
            v: version_stats(summaries, model, v, since_ms=since, accuracy=accuracy, reasons=counted)
            for v in (state.stable, canary.version)
        }
        verdict = judge(
            stats[state.stable],
            stats[canary.version],
            self.bounds,
            stage_age_ms=now_ms - stage_started_ms(state),
            worker_revisions=None
            if self._workers is None
            else await self._timed("workers", self._workers.revisions(model)),
            revision=state.revision,
            labels=self._labels,
        )
        if verdict.action == "hold":
            return verdict
        return await self._apply(state, verdict)

    async def _timed(self, part: str, step: Awaitable[T]) -> T:
        """``step`` awaited, its wall time added to :attr:`timings` under ``part``."""
        began = time.monotonic()
        try:
            return await step
        finally:
            self.timings[part] = self.timings.get(part, 0.0) + time.monotonic() - began

    async def _apply(self, judged: ModelState, verdict: Verdict) -> Verdict:
        current = await self._state(judged.model)
        if not isinstance(current, ModelState) or current.revision != judged.revision:
            return Verdict(
                "hold",
                (f"state moved from revision {judged.revision} while judging; judging again next step",),
                verdict.stable,
                verdict.canary,
            )
        now_ms = self._clock_ms()
        reason = f"automatic: {verdict.reason}"
        if verdict.action == "rollback":
            new = rollback(current, now_ms=now_ms, reason=reason)
        else:
            new = advance(current, now_ms=now_ms, reason=reason)
        await self._registry.publish_state(new)
        (self.metrics.rolled_back if verdict.action == "rollback" else self.metrics.advanced)(new.model)
        self._observe(new.model, new)
        log.info("%s: %s to revision %d: %s", new.model, verdict.action, new.revision, verdict.reason)
        return Verdict(verdict.action, verdict.reasons, verdict.stable, verdict.canary, new.revision)

    async def run(
        self,
        model: str,
        *,
        interval_s: float,
        stop: asyncio.Event,
        on_verdict: Callable[[Verdict], None] | None = None,
    ) -> None:
        """Step every ``interval_s`` until ``stop`` is set."""
        while not stop.is_set():
            verdict = await self.step(model)
            if on_verdict is not None:
                on_verdict(verdict)
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
            except TimeoutError:
                continue

    async def _read(
        self, part: str, tail: _Tail[T], key: tuple[str, int], keep: Callable[[T], bool], *, since_ms: int
    ) -> list[T]:
        """``tail``'s records for ``key`` (the model and its canary's start) that ``keep`` accepts, read
        on to the end offsets found now; the count read this time in :attr:`records_read`."""
        items, read = await tail.read(key, keep, since_ms=since_ms)
        self.records_read[part] = read
        return items


class _Tail(Generic[T]):
    """One topic read_committed for one key (a model and its canary's start), from the records stamped
    ``READ_MARGIN_MS`` before ``since_ms`` (the canary's start), then on from where each read ended:
    what ``keep`` accepted is kept between reads, so a step reads only the records written since the
    step before. Every step reading the canary's whole span again through a new consumer made the
    broker encrypt megabytes per step on a network thread that other clients share (the demo's device
    round trips stalled 100-200 ms at each step). Records that do not parse are logged and counted in
    ``skipped`` once. A read that fails, or a new key, starts over."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        parse: Callable[[bytes], T],
        *,
        timeout_ms: int,
        skipped: dict[str, int],
    ) -> None:
        from edgestream.pipeline.kafka import KeptReader, partitions
        from edgestream.topics.catalogue import parse_topic

        tps = partitions([(topic, parse_topic(topic).spec.partitions)])
        self._reader = KeptReader(kafka, _CLIENT_ID, tps, timeout_ms=timeout_ms)
        self._parse = parse
        self._skipped = skipped
        self._key: tuple[str, int] | None = None
        self._items: list[T] = []

    async def read(
        self, key: tuple[str, int], keep: Callable[[T], bool], *, since_ms: int
    ) -> tuple[list[T], int]:
        """What ``keep`` accepted since ``since_ms`` for ``key``, and how many records this read took."""
        if key != self._key:
            self._reader.restart()
        self._key = key
        records = await self._reader.read(since_ms=since_ms - READ_MARGIN_MS)
        if not self._reader.resumed:
            self._items = []
        self._items.extend(parsed(records, self._parse, keep, self._skipped))
        return list(self._items), len(records)

    async def close(self) -> None:
        """Stop the consumer and forget what was read (a later read starts over)."""
        self._key, self._items = None, []
        await self._reader.close()


def stage_shares(state: ModelState) -> dict[int, float]:
    """Share of devices each version of ``state`` is routed to (pins aside): the canary its fraction,
    stable the rest."""
    if state.stable is None:
        return {}
    if state.canary is None:
        return {state.stable: 1.0}
    return {state.stable: 1.0 - state.canary.fraction, state.canary.version: state.canary.fraction}


def parsed(
    records: Iterable[ConsumerRecord[bytes, bytes]],
    parse: Callable[[bytes], T],
    keep: Callable[[T], bool],
    skipped: dict[str, int],
) -> list[T]:
    """The records' values that ``parse`` reads and ``keep`` accepts; one that does not parse is
    logged and counted in ``skipped`` by topic (tombstones are left out)."""
    out: list[T] = []
    for record in records:
        if record.value is None:
            continue
        try:
            item = parse(record.value)
        except UndecodableRecord as e:
            skipped[record.topic] = skipped.get(record.topic, 0) + 1
            log.warning("skipping %s offset %d: %s", record.topic, record.offset, e)
            continue
        if keep(item):
            out.append(item)
    return out


async def watch_until_signalled(
    controller: Controller,
    model: str,
    *,
    interval_s: float,
    on_verdict: Callable[[Verdict], None],
    health_host: str = "127.0.0.1",
    health_port: int | None = None,
) -> None:
    """Step ``controller`` on ``model`` every ``interval_s`` until SIGINT or SIGTERM; with
    ``health_port`` (0: any free port), serve /livez, /readyz and /metrics meanwhile
    (``pipeline/observability/health.py``): live while the loop runs, ready while its last step could
    judge."""
    from edgestream.pipeline.observability.health import HealthServer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        if health_port is not None:
            server = HealthServer(
                live=lambda: (True, "ok"),
                ready=controller.ready,
                registry=controller.metrics.registry,
                host=health_host,
                port=health_port,
            )
            await stack.enter_async_context(server)
            log.info("health and metrics on http://%s:%d/", health_host, server.port)
        await controller.run(model, interval_s=interval_s, stop=stop, on_verdict=on_verdict)
