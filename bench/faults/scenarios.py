"""The fault scenarios (``kill9``, ``zombie``, ``rebalance``, ``broker_restart``, ``hostile``,
``poison``): each returns a ``ScenarioReport``.

A scenario makes a fresh region (its own topics and key file) on a broker, starts ``python -m edgestream
worker`` processes for it, produces traffic while it injects one kind of fault, waits until the region's
group has committed past everything on the ingest topics, stops the workers (SIGTERM), and checks the
read_committed view of the region's topics against what was sent (``checker.check``). The scenarios are
shared by the CI tests (``tests/faults/test_faults.py``) and the longer runs of ``python -m bench.faults``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from bench.faults.checker import Verdict, check
from bench.faults.env import (
    MAX_ENVELOPE_BYTES,
    FaultEnv,
    FaultRegion,
    FaultTimeout,
    make_corpus,
    make_region,
    wait_for,
)
from bench.faults.observe import Observed, observe
from bench.faults.poison import PoisonCorpus, poison_counts, poison_requirements
from bench.faults.records import CorpusRecord
from bench.faults.traffic import GroupProbe, Traffic, good_traffic, region_lag, wait_drained
from bench.faults.workers import Workers, partition_names
from edgestream.pipeline.contract.limits import BROKER_MESSAGE_MAX_BYTES
from edgestream.pipeline.contract.records import ResultRecord
from edgestream.topics.admin import alter_topic_config
from edgestream.topics.catalogue import results_topic
from edgestream.workers.local.broker.config import free_port
from edgestream.workers.local.broker.process import LocalBroker
from edgestream.workers.local.broker.settings import BrokerSettings

log = logging.getLogger(__name__)

_REFUSED = "GenerationRefused"
"""What a per_worker zombie's log says when the group coordinator refused its unit's offsets."""


@dataclass
class ScenarioReport:
    """One scenario's outcome: the verdict plus what the scenario did to the workers."""

    name: str
    region: str
    seed: int
    verdict: Verdict
    worker_restarts: int
    """Incarnations started after the first (deliberate kills included)."""
    unexpected_exits: list[str]
    """Workers that exited on their own (and were restarted unless the scenario expected it)."""
    exit_codes: dict[str, int]
    """Exit code of every incarnation, by node id."""
    wall_s: float
    extra: dict[str, Any] = field(default_factory=dict)
    """Scenario-specific observations."""
    broken: list[str] = field(default_factory=list)
    """The scenario's own requirements beyond the checker's invariant that did not hold, in words."""

    def violations(self) -> list[str]:
        return self.verdict.violations() + self.broken

    def summary(self) -> str:
        v = self.verdict
        reasons = ", ".join(f"{k} {n}" for k, n in sorted(v.dead_letters.items())) or "none"
        return (
            f"{self.name} (region {self.region}, seed {self.seed}): sent {v.sent}, written {v.written}, "
            f"results {v.results}, dead letters [{reasons}], lost {v.lost}, duplicated {v.duplicated}, "
            f"false replays {v.false_replays}, worker restarts {self.worker_restarts}, "
            f"unexpected exits {self.unexpected_exits or 0}, {self.wall_s:.1f} s; extra {self.extra}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "region": self.region,
            "seed": self.seed,
            **self.verdict.as_dict(),
            "worker_restarts": self.worker_restarts,
            "unexpected_exits": self.unexpected_exits,
            "exit_codes": self.exit_codes,
            "wall_s": round(self.wall_s, 2),
            "violations": self.violations(),
            "extra": self.extra,
        }


@contextlib.asynccontextmanager
async def _scenario(
    name: str,
    env: FaultEnv,
    region: FaultRegion,
    source: Iterator[CorpusRecord],
    rate_per_s: float,
    compression: str | None = None,
) -> AsyncIterator[tuple[Workers, Traffic, GroupProbe]]:
    env.on_event(f"{name}: region {region.name}")
    async with Workers(region, env) as workers, GroupProbe(region) as probe:
        traffic = Traffic(region, source, rate_per_s=rate_per_s, compression=compression)
        try:
            yield workers, traffic, probe
        finally:
            await traffic.stop()


async def _finish(
    name: str,
    env: FaultEnv,
    region: FaultRegion,
    workers: Workers,
    traffic: Traffic,
    started: float,
    inspect: Callable[[Observed], Mapping[str, Any]] | None = None,
    tolerate_stale: bool = False,
    tolerate_refused: bool = False,
    max_envelope_bytes: int = MAX_ENVELOPE_BYTES,
    **extra: Any,
) -> ScenarioReport:
    """Stop traffic, wait for the group to drain, stop the workers, read and judge."""
    await traffic.stop()
    env.on_event(f"{name}: {traffic.sent} sent; draining")
    await wait_drained(region)
    await workers.stop_all()
    env.on_event(f"{name}: checking")
    observed = await observe(region)
    verdict = check(
        traffic.ledger,
        observed,
        tolerate_stale=tolerate_stale,
        tolerate_refused=tolerate_refused,
        max_envelope_bytes=max_envelope_bytes,
    )
    extra["aborted_outputs"] = observed.aborted
    extra["replies"] = observed.replies_of_results()
    extra["rewinds"] = workers.count_log_lines("re-reading")
    extra["results_by_node"] = dict(
        sorted(Counter(ResultRecord.from_bytes(r.value or b"").node for r in observed.results).items())
    )
    if inspect is not None:
        extra.update(inspect(observed))
    exit_codes = {f"{w.name}.{i + 1}": code for w in workers.all.values() for i, code in enumerate(w.exits)}
    report = ScenarioReport(
        name=name,
        region=region.name,
        seed=env.seed,
        verdict=verdict,
        worker_restarts=workers.restarts,
        unexpected_exits=list(workers.unexpected_exits),
        exit_codes=exit_codes,
        wall_s=time.monotonic() - started,
        extra=extra,
    )
    log.info("%s", report.summary())
    return report


async def kill9(env: FaultEnv, *, cycles: int, rate_per_s: float = 100.0) -> ScenarioReport:
    """kill -9 the worker at a random point of a steady stream, start it again; ``cycles`` times."""
    started = time.monotonic()
    rng = random.Random(env.seed)
    region = await make_region(env)
    corpus = make_corpus(env, region)
    async with _scenario("kill -9", env, region, good_traffic(corpus), rate_per_s) as (
        workers,
        traffic,
        probe,
    ):
        worker = workers.start("w")
        await worker.ready()
        async with traffic:
            pauses_s, lag_at_kill = [], []
            for cycle in range(cycles):
                await probe.progress(f"worker {worker.node_id} commits")
                if cycle % 2:
                    # Every other kill lands in steady streaming, the rest while the backlog of the
                    # previous restart is being caught up; so no input waits past the age limit.
                    await wait_drained(region, max_lag=int(rate_per_s))
                pause_s = rng.uniform(0.0, 1.0)  # a random point of the stream, not a readiness wait
                pauses_s.append(round(pause_s, 3))
                await asyncio.sleep(pause_s)
                lag_at_kill.append(await region_lag(region))
                code = await worker.kill9()
                env.on_event(f"kill -9: cycle {cycle + 1}/{cycles}, killed {worker.node_id} ({code})")
                workers.restart(worker)
                await worker.ready()
            await probe.progress(f"worker {worker.node_id} commits after the last restart")
            return await _finish(
                "kill -9",
                env,
                region,
                workers,
                traffic,
                started,
                cycles=cycles,
                kill_delays_s=pauses_s,
                lag_at_kill=lag_at_kill,
            )


async def zombie(env: FaultEnv, *, rate_per_s: float = 100.0, stopped_past_s: float = 3.0) -> ScenarioReport:
    """Two workers; SIGSTOP one until the other owns all partitions (its session timed out) and has
    committed on them, keep traffic flowing, then SIGCONT it: it must be fenced (per_partition) or have
    its unit's offsets refused for its stale generation (per_worker), nothing doubled."""
    started = time.monotonic()
    rng = random.Random(env.seed)
    region = await make_region(env)
    corpus = make_corpus(env, region)
    everything = partition_names(region)
    # Units wait up to 300 ms to fill and the latency budget is wide: when the stop lands, the zombie
    # very likely holds records it has fetched and not committed.
    slow = {"MAX_WAIT_MS": 300, "SLA_MS": 10_000}
    async with _scenario("zombie", env, region, good_traffic(corpus), rate_per_s) as (
        workers,
        traffic,
        probe,
    ):
        live, victim = workers.start("live", **slow), workers.start("zombie", **slow)
        await asyncio.gather(live.ready(), victim.ready())
        async with traffic:

            def shared() -> bool:
                a, b = live.assigned() or set(), victim.assigned() or set()
                return bool(a) and bool(b) and a | b == everything and not a & b

            await wait_for("both workers own partitions", shared, 60)
            theirs = victim.assigned() or set()
            await probe.progress("the zombie-to-be commits", partitions=theirs)
            await asyncio.sleep(rng.uniform(0.05, 0.5))  # a random point of its stream
            victim.stopping = True  # its exit is the expected outcome, not one to restart
            victim.signal(signal.SIGSTOP)
            stopped_at = time.monotonic()
            takeover_s = await wait_for(
                "the live worker owns every partition", lambda: live.assigned() == everything, 60
            )
            await probe.progress("the live worker commits on the zombie's partitions", partitions=theirs)
            # Past the session timeout and the takeover, with traffic flowing, for a while longer.
            await asyncio.sleep(stopped_past_s)
            stopped_s = time.monotonic() - stopped_at
            resumed_ms = time.time() * 1000.0
            victim.signal(signal.SIGCONT)
            # per_partition: a newer producer with its partitions' transactional ids fences it (it
            # exits). per_worker: the group coordinator refuses its stale generation; its unit aborts and
            # it rejoins the group as a new member (it does not exit).
            with contextlib.suppress(FaultTimeout):
                await wait_for(
                    "the zombie is fenced or refused",
                    lambda: not victim.alive() or _REFUSED in victim.log_text(),
                    45,
                    0.1,
                )
            code = await victim.wait_exit(0)
            zombie_log = victim.log_text()
            await probe.progress("the live worker commits after the zombie woke")

            def after_resume(observed: Observed) -> dict[str, int]:
                results = (ResultRecord.from_bytes(r.value or b"") for r in observed.results)
                late = [r for r in results if r.node == victim.node_id and r.produced_at_ms >= resumed_ms]
                return {"zombie_results_after_resume": len(late)}

            return await _finish(
                "zombie",
                env,
                region,
                workers,
                traffic,
                started,
                after_resume,
                zombie_partitions=sorted(theirs),
                stopped_s=round(stopped_s, 2),
                takeover_s=round(takeover_s, 2),
                zombie_exit_code=code,
                zombie_log_says_fenced=bool(re.search(r"fenced", zombie_log, re.IGNORECASE)),
                zombie_log_says_refused=_REFUSED in zombie_log,
                zombie_errors=victim.errors(),
            )


async def rebalance(env: FaultEnv, *, rate_per_s: float = 100.0) -> ScenarioReport:
    """One worker, then three (two join), then one again (the two leave on SIGTERM), traffic throughout."""
    started = time.monotonic()
    region = await make_region(env)
    corpus = make_corpus(env, region)
    everything = partition_names(region)
    async with _scenario("rebalance 1-3-1", env, region, good_traffic(corpus), rate_per_s) as (
        workers,
        traffic,
        probe,
    ):
        first = workers.start("a")
        await first.ready()
        async with traffic:
            await probe.progress("one worker commits")
            joiners = [workers.start("b"), workers.start("c")]
            await asyncio.gather(*(w.ready() for w in joiners))
            trio = [first, *joiners]

            def spread() -> bool:
                owned = [w.assigned() or set() for w in trio]
                return (
                    all(owned)
                    and set().union(*owned) == everything
                    and sum(map(len, owned)) == len(everything)
                )

            await wait_for("three workers share the partitions", spread, 60)
            env.on_event("rebalance: three workers")
            for w in trio:
                await probe.progress(f"{w.node_id} commits", partitions=w.assigned() or ())
            leave_codes = await asyncio.gather(*(w.stop() for w in joiners))
            await wait_for("one worker owns every partition", lambda: first.assigned() == everything, 60)
            env.on_event("rebalance: back to one")
            await probe.progress("the last worker commits")
            return await _finish(
                "rebalance 1-3-1", env, region, workers, traffic, started, leave_exit_codes=list(leave_codes)
            )


async def shrunk(
    env: FaultEnv, *, rate_per_s: float = 100.0, lowered_s: float = 3.0, limit_bytes: int = 150
) -> ScenarioReport:
    """An operator lowers the results topic's ``max.message.bytes`` below a result (``limit_bytes``; a
    transaction marker still fits) for ``lowered_s`` under traffic, then restores it. Before, the
    worker's unit was refused at every re-read and its partitions stopped for good (at-least-once: the
    worker exited). Now every input still has exactly one outcome: those answered in the window are
    dead-lettered ``internal`` (refused for its size), the rest answered; the worker never exits."""
    started = time.monotonic()
    region = await make_region(env)
    corpus = make_corpus(env, region)
    results = results_topic(region.name)
    name = "results topic limit lowered"
    async with _scenario(name, env, region, good_traffic(corpus), rate_per_s) as (workers, traffic, probe):
        worker = workers.start("a")
        await worker.ready()
        async with traffic:
            await probe.progress("the worker commits")
            await alter_topic_config(region.bootstrap, results, "max.message.bytes", str(limit_bytes))
            env.on_event(f"{name}: {results} max.message.bytes {limit_bytes} for {lowered_s:g} s")
            await asyncio.sleep(lowered_s)
            await alter_topic_config(
                region.bootstrap, results, "max.message.bytes", str(BROKER_MESSAGE_MAX_BYTES)
            )
            env.on_event(f"{name}: restored")
            await probe.progress("the worker commits after the limit is restored")
            return await _finish(
                name,
                env,
                region,
                workers,
                traffic,
                started,
                tolerate_refused=True,
                refused_records=workers.count_log_lines("dead-lettering the record"),
            )


async def broker_restart(
    env: FaultEnv,
    *,
    rate_per_s: float = 100.0,
    outage_s: float = 3.0,
    restarts: int = 1,
    after_s: float = 4.0,
) -> ScenarioReport:
    """Two workers on a broker of their own; stop the broker (SIGTERM), keep it down ``outage_s``, start
    it again on the same ports, let traffic flow ``after_s`` more; ``restarts`` times. A worker that
    exits is counted and started again."""
    started = time.monotonic()
    port = free_port()
    controller_port = free_port()
    while controller_port == port:
        controller_port = free_port()
    settings = BrokerSettings(home=env.run_dir / "restart-broker", port=port, controller_port=controller_port)
    broker = LocalBroker(settings)
    env.on_event(f"broker restart: starting a broker on 127.0.0.1:{port}")
    state = await asyncio.to_thread(broker.start, 120)
    rng = random.Random(env.seed)
    # The scenario's own clients (traffic, probe) retry through the outage on purpose; their
    # connection errors, thousands of them, would bury a failure's report.
    client_log = logging.getLogger("aiokafka")
    client_level = client_log.level
    client_log.setLevel(logging.CRITICAL)
    try:
        region = await make_region(env, state.kafka(), prefix="b", tls_root=state.tls_root)
        corpus = make_corpus(env, region)
        async with _scenario("broker restart", env, region, good_traffic(corpus), rate_per_s) as (
            workers,
            traffic,
            probe,
        ):
            pair = [workers.start("a"), workers.start("b")]
            await asyncio.gather(*(w.ready() for w in pair))
            async with traffic:
                timings: list[dict[str, float]] = []
                for n in range(restarts):
                    await probe.progress("the workers commit")
                    await asyncio.sleep(rng.uniform(0.5, 2.0))  # a random point of the stream
                    t0 = time.monotonic()
                    await asyncio.to_thread(broker.stop)
                    t1 = time.monotonic()
                    env.on_event(f"broker restart {n + 1}/{restarts}: stopped in {t1 - t0:.1f} s")
                    await asyncio.sleep(outage_s)  # the outage itself
                    t2 = time.monotonic()
                    again = await asyncio.to_thread(broker.start, 120)
                    t3 = time.monotonic()
                    if again.bootstrap != state.bootstrap:
                        raise AssertionError(f"broker came back at {again.bootstrap}, not {state.bootstrap}")
                    env.on_event(f"broker restart {n + 1}/{restarts}: back, started in {t3 - t2:.1f} s")
                    await probe.progress("the workers commit after the restart", timeout_s=150)
                    t4 = time.monotonic()
                    timings.append(
                        {
                            "stop_s": round(t1 - t0, 2),
                            "down_s": round(t3 - t0, 2),
                            "first_commit_after_s": round(t4 - t3, 2),
                        }
                    )
                    await asyncio.sleep(after_s)  # traffic keeps flowing on the restarted broker
                return await _finish(
                    "broker restart",
                    env,
                    region,
                    workers,
                    traffic,
                    started,
                    tolerate_stale=True,
                    broker_restarts=restarts,
                    timings=timings,
                    send_failures=len(traffic.failed),
                )
    finally:
        client_log.setLevel(client_level)
        await asyncio.to_thread(broker.stop)


async def hostile(env: FaultEnv, *, good: int, bad: int, rate_per_s: float = 800.0) -> ScenarioReport:
    """One worker; ``bad`` malformed records of every category mixed into ``good`` good ones from many
    devices. Every bad one dead-lettered with its reason and origin, every good one answered once, and
    the worker never restarts (same pid; at SIGTERM its stats say it consumed everything written)."""
    started = time.monotonic()
    region = await make_region(env)
    corpus = make_corpus(env, region, devices=500)
    stream = corpus.stream(good, bad)
    async with _scenario("hostile input", env, region, stream, rate_per_s) as (workers, traffic, _probe):
        worker = workers.start("w")
        ready = await worker.ready()
        async with traffic:
            await wait_for("the corpus is sent", traffic.exhausted.is_set, 60 + (good + bad) / rate_per_s)
            await traffic.stop()
            report = await _finish("hostile input", env, region, workers, traffic, started)
    stats = worker.stats() or {}
    report.extra.update(
        incarnations=worker.incarnation,
        pid_at_ready=ready.get("pid"),
        pid_at_exit=worker.pid,
        stats_consumed=stats.get("consumed"),
        stats_results=stats.get("results"),
        stats_dead_letters=stats.get("dead_letters"),
        categories=len(report.verdict.by_category),
    )
    return report


TRAFFIC_COMPRESSION: Final = "lz4"
"""The codec the poison scenario's traffic is compressed with (librdkafka devices often set it)."""


async def poison(
    env: FaultEnv,
    *,
    good: int,
    bad: int,
    flood: int,
    flood_bursts: int = 2,
    large: int = 12,
    rate_per_s: float = 800.0,
) -> ScenarioReport:
    """Issue 12's proof, one worker with the DEFAULT settings: ``bad`` hostile records of every kind
    (``ALL_CATEGORIES``; ``large`` of them about a MiB), one device's ``flood`` in ``flood_bursts``
    bursts, and ``good`` good records of 500 other devices on the same partitions. Every good one
    answered once, every hostile one dead-lettered with its reason, every flood record one outcome (a
    result, ``rate_limited`` or ``stale``); the worker never exits, never rewinds, aborts nothing. The
    traffic's batches are lz4-compressed (`TRAFFIC_COMPRESSION`), as a device's Kafka client may send
    them (records built byte by byte, and those over 16 KiB, go uncompressed: `Traffic`)."""
    started = time.monotonic()
    region = await make_region(env)
    corpus = PoisonCorpus(region.name, region.keyring, served_versions=env.served_versions, seed=env.seed)
    stream = corpus.stream(good, bad, flood=flood, flood_bursts=flood_bursts, large=large)
    async with _scenario("poison", env, region, stream, rate_per_s, compression=TRAFFIC_COMPRESSION) as (
        workers,
        traffic,
        _probe,
    ):
        worker = workers.start_with_defaults("w")
        ready = await worker.ready()
        async with traffic:
            sending_s = 60 + (good + bad + flood) / rate_per_s
            await wait_for("the corpus is sent", traffic.exhausted.is_set, sending_s)
            await traffic.stop()
            report = await _finish(
                "poison", env, region, workers, traffic, started, max_envelope_bytes=corpus.max_envelope_bytes
            )
    stats = worker.stats() or {}
    report.extra.update(
        poison_counts(report.verdict),
        max_envelope_bytes=corpus.max_envelope_bytes,
        compression=TRAFFIC_COMPRESSION,
        worker_settings=dict(worker.settings),
        incarnations=worker.incarnation,
        pid_at_ready=ready.get("pid"),
        pid_at_exit=worker.pid,
        stats_consumed=stats.get("consumed"),
        stats_rewinds=stats.get("rewinds"),
        stats_dead_letters=stats.get("dead_letters"),
    )
    report.broken += poison_requirements(
        report.verdict, report.extra, report.unexpected_exits, report.exit_codes
    )
    return report


SCENARIOS: Mapping[str, Callable[..., Awaitable[ScenarioReport]]] = {
    "kill9": kill9,
    "zombie": zombie,
    "rebalance": rebalance,
    "broker_restart": broker_restart,
    "hostile": hostile,
    "poison": poison,
}
"""Every scenario by name."""
