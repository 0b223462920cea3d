"""The whole run: a temporary home, a TLS broker, both regions' topics and ACLs, then each phase on
fresh worker processes, every process's CPU counted from ``/proc`` over the measured window."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition
from rich.console import Console

from bench import REPO_ROOT
from bench.flood.figures import (
    backlog_drain,
    grown,
    honest_produce,
    quota_byte_rates,
    rate_between,
    recovered_after_s,
    recovery_bins,
    region_window,
    throttle_max_ms,
)
from bench.flood.fleet import FloodFleet, fleet_settings
from bench.flood.flooder import FlooderConfig
from bench.flood.settings import FLOOD_DEVICE, REGION_A, REGION_B, REGIONS, FloodSettings, PhaseKind
from bench.pipeline.machine import (
    CpuUse,
    CpuWatch,
    code_facts,
    foreign_processes,
    jit_seconds,
    jit_thread_ticks,
    machine_facts,
)
from edgestream.pipeline import eventloop, heap, kafka
from edgestream.pipeline.models import ModelStore
from edgestream.pipeline.security import keyfile
from edgestream.pipeline.security.identities import Identity
from edgestream.pipeline.security.keyring import KeyRing
from edgestream.pipeline.settings import KafkaSettings
from edgestream.topics.acl_admin import apply_policy
from edgestream.topics.admin import delete_topics, ensure_topics, list_topics
from edgestream.topics.catalogue import (
    KINDS,
    all_topics,
    edge_group,
    ingest_topic,
    parse_topic,
    region_topics,
)
from edgestream.topics.errors import TopicAdminError
from edgestream.workers.local.broker.process import running_broker
from edgestream.workers.local.broker.settings import BrokerSettings
from edgestream.workers.local.fleet_settings import MODEL_FOR_KIND
from edgestream.workers.local.fleetreport import FleetReport, Progress
from edgestream.workers.local.processes import Child

log = logging.getLogger(__name__)

CLIENT_ID = "edgestream-bench-flood"
STATS_INTERVAL_S = 1.0
"""How often the workers write their stats file: their dead letters over the window are read from it
at the window's ends (so to within about a second)."""
TOPICS_TIMEOUT_S = 60.0
"""How long deleting and making again both regions' topics between phases may take."""
JIT_QUIET_WINDOW_S = 2.0
"""Over how long the broker's JIT compilers must stay under ``jit_quiet_share`` after the warm-up."""
PROGRESS_EVERY_S = 5.0
"""How often a phase logs where its fleet is."""
FLEET_SLACK_S = 60.0
"""The fleets are set to send this much longer than a phase's window, and stopped at its end."""


@dataclass(slots=True)
class Env:
    """What every phase needs."""

    s: FloodSettings
    console: Console
    home: Path
    admin: KafkaSettings
    """The broker as ``admin`` (topics, offsets, quotas)."""
    edge: dict[str, KafkaSettings]
    """Each region's worker, as ``edge-<region>``."""
    flooder_kafka: KafkaSettings
    """The flooder, as ``device-<region A>``."""
    tls_root: Path | None
    keyring: KeyRing
    broker_pid: int
    started_s: float = field(default_factory=time.monotonic)
    quota_set: bool = False
    """Whether a quota is on the devices' principals now (the next phase without one clears it)."""
    flood_over_s: float | None = None
    """When the last flooder exited (monotonic s); None before any."""
    run_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.run_dir = self.home / "run"
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def step(self, message: str) -> None:
        self.console.log(f"[{time.monotonic() - self.started_s:5.0f} s] {message}")


@dataclass(frozen=True, slots=True)
class Phase:
    """One phase to run."""

    name: str
    kind: PhaseKind
    quota: dict[str, float | None] | None = None
    """The quota on both regions' device principals (``DeviceQuotas``' fields); None: none."""
    factor: float | None = None
    """The byte-rate quota as a multiple of the honest fleet's rate, where sized so."""

    @property
    def flood(self) -> bool:
        return self.kind in ("flood", "flood_quota", "recovery")


# -- processes ----------------------------------------------------------------------------------------


def worker_env(env: Env, region: str, name: str) -> dict[str, str]:
    """The worker's environment: its defaults, its region, identity, home and run files."""
    return {
        **os.environ,
        "OTEL_TRACES_EXPORTER": "none",
        "EDGESTREAM_WORKER_REGION": region,
        "EDGESTREAM_WORKER_NODE_ID": name,
        "EDGESTREAM_WORKER_HOME": str(env.home),
        "EDGESTREAM_WORKER_KEY_FILE": str(env.home / "keys.json"),
        **env.edge[region].to_env("EDGESTREAM_WORKER_KAFKA__"),
        "EDGESTREAM_WORKER_READY_FILE": str(env.run_dir / f"{name}.ready"),
        "EDGESTREAM_WORKER_STATS_FILE": str(env.run_dir / f"{name}.stats.json"),
        "EDGESTREAM_WORKER_STATS_INTERVAL_S": str(STATS_INTERVAL_S),
    }


def read_json(path: Path) -> dict[str, Any]:
    """A run file's JSON, {} when it is not there (yet) or half written."""
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data


async def start_workers(env: Env, phase: str) -> dict[str, Child]:
    """One fresh worker per region (new node ids: new transactional ids, no state from before), both
    ready."""
    workers = {}
    for region in REGIONS:
        name = f"worker-{region}-{phase}"
        workers[region] = Child.start(
            name,
            [sys.executable, "-m", "edgestream", "worker"],
            env=worker_env(env, region, name),
            log_file=env.run_dir / f"{name}.log",
            cwd=REPO_ROOT,
        )
    try:
        for child in workers.values():
            await child.wait_ready_async(env.run_dir / f"{child.name}.ready", env.s.ready_timeout_s)
    except BaseException:
        await stop_children(workers.values())
        raise
    return workers


async def stop_children(children: Any) -> None:
    """SIGTERM to each, side by side; warn of any that did not exit 0."""
    children = list(children)
    codes = await asyncio.gather(*(c.stop_async() for c in children))
    for child, code in zip(children, codes, strict=True):
        if code != 0:
            log.warning("%s exited with %d:\n%s", child.name, code, child.tail())


async def start_flooder(env: Env, phase: str, *, wait_for_go: bool = False) -> tuple[Child, Path]:
    """The flooder process, its pool sealed and its producer connected: it floods from then on, or
    from SIGUSR1 with ``wait_for_go``."""
    s = env.s
    name = f"flooder-{phase}"
    key_id = env.keyring.current_key_id(REGION_A)
    config = FlooderConfig(
        kafka=env.flooder_kafka,
        region=REGION_A,
        device_id=FLOOD_DEVICE,
        key_id=key_id,
        key_hex=env.keyring.device_key(REGION_A, FLOOD_DEVICE, key_id).hex(),
        kind=s.flood_kind,
        pool=s.flood_pool,
        linger_ms=s.flood_linger_ms,
        capture_ahead_ms=s.flood_capture_ahead_ms,
        seed=s.seed,
        ready_file=env.run_dir / f"{name}.ready",
        report_file=env.run_dir / f"{name}.report.json",
        wait_for_go=wait_for_go,
    )
    config_file = env.run_dir / f"{name}.json"
    config_file.write_text(config.model_dump_json())
    config_file.chmod(0o600)  # it holds the device key
    child = Child.start(
        name,
        [sys.executable, "-m", "bench.flood", "flooder", str(config_file)],
        env=dict(os.environ),
        log_file=env.run_dir / f"{name}.log",
        cwd=REPO_ROOT,
        nice=s.flood_nice,
    )
    try:
        await child.wait_ready_async(config.ready_file, s.ready_timeout_s)
    except BaseException:
        await stop_children([child])
        raise
    return child, config.report_file


# -- the broker's side --------------------------------------------------------------------------------


def ingest_partitions(region: str) -> list[TopicPartition]:
    """Every partition of the region's ingest topics."""
    topics = [ingest_topic(region, kind) for kind in KINDS]
    return kafka.partitions((topic, parse_topic(topic).spec.partitions) for topic in topics)


async def backlog(env: Env, region: str) -> int:
    """Records in the region's ingest topics its workers have not committed past."""
    lag = await kafka.consumer_lag(
        env.admin, edge_group(region), ingest_partitions(region), client_id=CLIENT_ID
    )
    return sum(lag.values())


async def fresh_topics(env: Env) -> float:
    """Delete both regions' topics and make them again, empty: nothing of the phase before is left to
    read. Skipping the backlog's offsets is not enough: a new worker reads each partition's last
    ``max_age_ms`` back to rebuild its replay memory (``workers/edge/replaymemory.py``), which a flood's
    million records keep it from finishing, and then refuses the partition's fresh records as ``stale``.
    The seconds it took."""
    started_s = time.monotonic()
    topics = [t for r in REGIONS for t in region_topics(r)]
    names = {t.name for t in topics}
    await delete_topics(env.admin, sorted(names))
    while names & set(await list_topics(env.admin)):
        if time.monotonic() - started_s > TOPICS_TIMEOUT_S:
            raise TimeoutError(
                f"the topics of {', '.join(REGIONS)} were not deleted in {TOPICS_TIMEOUT_S:g} s"
            )
        await asyncio.sleep(0.2)
    while True:
        try:
            report = await ensure_topics(env.admin, topics)
        except TopicAdminError:  # the deletion is not done everywhere yet
            if time.monotonic() - started_s > TOPICS_TIMEOUT_S:
                raise
            await asyncio.sleep(0.5)
            continue
        if report.existing:
            raise RuntimeError(f"topics still there after their deletion: {report.existing}")
        return time.monotonic() - started_s


async def settle_quota_window(env: Env, phase: Phase) -> float:
    """Before a phase under a quota, wait until the last flood is out of the broker's quota window
    (``quota_settle_s`` after the last flooder exited); the seconds waited."""
    if phase.quota is None or env.flood_over_s is None:
        return 0.0
    wait_s = env.flood_over_s + env.s.quota_settle_s - time.monotonic()
    if wait_s <= 0:
        return 0.0
    env.step(f"{phase.name}: waiting {wait_s:.1f} s for the last flood to leave the broker's quota window")
    await asyncio.sleep(wait_s)
    return wait_s


def _whole(rate: float | None) -> int | None:
    """A byte rate as Kafka takes it: whole bytes per second."""
    return None if rate is None else round(rate)


async def set_quota(env: Env, phase: Phase) -> None:
    """The phase's quota on both regions' device principals, or none (cleared when one was set)."""
    if phase.quota is None and not env.quota_set:
        return
    from edgestream.topics.quota_admin import apply_quotas
    from edgestream.topics.quotas import DeviceQuotas

    quotas = DeviceQuotas.none()
    if phase.quota is not None:
        q = phase.quota
        quotas = DeviceQuotas(
            producer_byte_rate=_whole(q["producer_byte_rate"]),
            consumer_byte_rate=_whole(q["consumer_byte_rate"]),
            request_percentage=q["request_percentage"],
        )
    started_s = time.monotonic()
    await apply_quotas(env.admin, list(REGIONS), quotas, timeout_ms=env.s.quota_timeout_ms)
    env.quota_set = phase.quota is not None
    env.step(
        f"{phase.name}: quota {'cleared' if phase.quota is None else phase.quota} on "
        f"{', '.join(f'device-{r}' for r in REGIONS)} ({time.monotonic() - started_s:.1f} s)"
    )


# -- one phase ----------------------------------------------------------------------------------------


def _noter(latest: dict[str, Progress], region: str) -> Callable[[Progress], None]:
    def note(p: Progress) -> None:
        latest[region] = p

    return note


async def _log_progress(env: Env, name: str, latest: Mapping[str, Progress]) -> None:
    """Every ``PROGRESS_EVERY_S``: where each region's fleet is."""
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        parts = []
        for region, p in latest.items():
            p99 = "-" if p.p99_ms is None else f"{p.p99_ms:.0f} ms"
            parts.append(
                f"{region} {p.elapsed_s:.0f}/{p.duration_s:.0f} s sent {p.sent} answered {p.answered} "
                f"fallbacks {p.fallbacks} recent p99 {p99}"
            )
        if parts:
            env.step(f"  {name}: " + "; ".join(parts))


async def _all_sending(
    running: Mapping[str, asyncio.Task[Any]], sending: Mapping[str, asyncio.Event]
) -> None:
    """Wait until every fleet sends; raise why a fleet stopped before it did."""
    waits = [asyncio.create_task(e.wait()) for e in sending.values()]
    try:
        while not all(e.is_set() for e in sending.values()):
            await asyncio.wait([*running.values(), *waits], return_when=asyncio.FIRST_COMPLETED)
            for task in running.values():
                if task.done():
                    task.result()  # raises why it stopped
                    raise RuntimeError("a fleet stopped before it sent")
    finally:
        for w in waits:
            w.cancel()


def _cores(cpu: CpuUse) -> dict[str, float]:
    return {role: round(v, 3) for role, v in cpu.core_share().items()}


async def stop_flood(env: Env, phase: Phase, flooder: Child, report_file: Path) -> dict[str, Any]:
    """SIGTERM to the flooder, and wait until it exited (killed after ``STOP_TIMEOUT_S``): from then on
    nothing of the flood can reach the broker. When the flood ended (the flooder's own note of when it
    stopped producing; when it exited, without its report), and how the stop went."""
    term_s = time.time()
    await stop_children([flooder])
    env.flood_over_s = time.monotonic()
    exited_s = time.time()
    report = read_json(report_file)
    stopped_s = report.get("stopped_s")
    end_s = float(stopped_s) if stopped_s is not None else exited_s
    env.step(
        f"  {phase.name}: the flooder stopped producing {end_s - term_s:.2f} s after SIGTERM and exited "
        f"{exited_s - term_s:.2f} s after it; {report.get('acked_after_stop', '?')} records acknowledged "
        "after it stopped"
    )
    return {
        "flood_end_s": end_s,
        "signal_to_stopped_s": end_s - term_s,
        "signal_to_exit_s": exited_s - term_s,
        "exited_after_flood_end_s": exited_s - end_s,
        "acked_after_stop": report.get("acked_after_stop"),
        "left_in_flight": report.get("left_in_flight"),
        "report_written": bool(report),
    }


async def measure_phase(env: Env, phase: Phase, warmup_s: float, duration_s: float) -> dict[str, Any]:
    """Run one phase: quota, fresh workers, the flooder, the fleets; the figures of its window (the
    ``duration_s`` after ``warmup_s`` of sending). A ``recovery`` phase's window is the flood's
    ``recovery_flood_s`` (the flooder, connected before, starts flooding at the window's start) and the
    ``recovery_s`` after the flood's end (``duration_s`` is not used)."""
    s = env.s
    recovering = phase.kind == "recovery"
    settle_s = await settle_quota_window(env, phase)
    env.step(f"phase {phase.name}: starting a worker per region")
    await set_quota(env, phase)
    workers = await start_workers(env, phase.name)
    flooder: Child | None = None
    report_file: Path | None = None
    running: dict[str, asyncio.Task[FleetReport]] = {}
    ticker: asyncio.Task[None] | None = None
    backlog_then: asyncio.Task[int] | None = None
    try:
        if phase.flood:
            env.step(
                f"  {phase.name}: starting the flooder ({s.flood_pool:,} {s.flood_kind} envelopes sealed"
                + (", flooding when told)" if recovering else ")")
            )
            flooder, report_file = await start_flooder(env, phase.name, wait_for_go=recovering)
        # The fleets send longer than the window lasts, and stop at its end (a flooder slow to stop
        # makes a recovery phase's window longer than planned).
        send_s = warmup_s + duration_s + FLEET_SLACK_S
        stop_sending = asyncio.Event()
        fleets = {
            r: FloodFleet(fleet_settings(s, r, i, env.admin, env.tls_root, env.home, send_s), env.keyring)
            for i, r in enumerate(REGIONS)
        }
        latest: dict[str, Progress] = {}
        sending = {r: asyncio.Event() for r in REGIONS}
        running = {
            r: asyncio.create_task(f.run(_noter(latest, r), until=stop_sending, sending=sending[r]))
            for r, f in fleets.items()
        }
        ticker = asyncio.create_task(_log_progress(env, phase.name, latest))
        await _all_sending(running, sending)
        await asyncio.sleep(warmup_s)
        pids = {f"worker_{r}": c.proc.pid for r, c in workers.items()}
        pids |= {"broker": env.broker_pid, "fleets": os.getpid()}
        if flooder is not None:
            pids["flooder"] = flooder.proc.pid
        stats_files = {r: env.run_dir / f"{c.name}.stats.json" for r, c in workers.items()}
        before = {r: read_json(path) for r, path in stats_files.items()}
        watch = CpuWatch(pids, jvm_pid=env.broker_pid)
        watch.start()
        start_s = time.time()
        stop: dict[str, Any] | None = None
        if recovering and flooder is not None and report_file is not None:
            flooder.proc.send_signal(signal.SIGUSR1)  # flood from now
            await asyncio.sleep(s.recovery_flood_s)
            stop = await stop_flood(env, phase, flooder, report_file)
            flooder = None
            backlog_then = asyncio.create_task(backlog(env, REGION_A))
            env.step(f"  {phase.name}: the flood stopped; {s.recovery_s:g} s of recovery")
            await asyncio.sleep(max(0.0, stop["flood_end_s"] + s.recovery_s - time.time()))
        else:
            await asyncio.sleep(duration_s)
        end_s = time.time()
        stop_sending.set()
        cpu = watch.stop()
        after = {r: read_json(path) for r, path in stats_files.items()}
        flood_report: dict[str, Any] = {}
        if flooder is not None:
            await stop_children([flooder])
            env.flood_over_s = time.monotonic()
            flooder = None
        if report_file is not None:
            flood_report = read_json(report_file)
        env.step(f"  {phase.name}: window done; the fleets drain")
        lag_at_end = {r: await backlog(env, r) for r in REGIONS}
        lag_at_flood_end = None if backlog_then is None else await backlog_then
        reports = {r: await task for r, task in running.items()}
    finally:
        if ticker is not None:
            ticker.cancel()
        if backlog_then is not None:
            backlog_then.cancel()
        for task in running.values():
            task.cancel()
        await asyncio.gather(*running.values(), return_exceptions=True)
        if backlog_then is not None:
            await asyncio.gather(backlog_then, return_exceptions=True)
        if flooder is not None:
            await stop_children([flooder])
            env.flood_over_s = time.monotonic()
        await stop_children(workers.values())
    final = {r: read_json(env.run_dir / f"{c.name}.stats.json") for r, c in workers.items()}
    window_s = end_s - start_s
    flood_end_s = None if stop is None else float(stop["flood_end_s"])
    regions = {}
    for region in REGIONS:
        report = reports[region]
        seen = region_window(
            report.round_trips,
            report.no_answer,
            region,
            start_s * 1000.0,
            end_s * 1000.0,
            sla_ms=s.sla_ms,
            deadline_ms=s.device_deadline_ms,
        )
        worker_s = cpu.processes_s.get(f"worker_{region}", 0.0)
        fleet = fleets[region]
        mean_bytes = fleet.mean_record_bytes()
        throttles = fleet.producer_throttles(region)
        told_ms, told = throttle_max_ms(throttles, start_s, end_s)
        regions[region] = {
            **seen,
            "honest_record_bytes": mean_bytes,
            "honest_record_bytes_per_s": None if mean_bytes is None else mean_bytes * seen["sent_per_s"],
            "worker_cores": worker_s / window_s,
            "worker_ms_per_honest_request": 1000.0 * worker_s / seen["sent"] if seen["sent"] else None,
            "worker_consumed_per_s": (
                int(after[region].get("consumed", 0)) - int(before[region].get("consumed", 0))
            )
            / window_s,
            "dead_letters_in_window": grown(
                before[region].get("dead_letters", {}), after[region].get("dead_letters", {})
            ),
            "dead_letters_whole_phase": final[region].get("dead_letters", {}),
            "worker_consumed_whole_phase": final[region].get("consumed"),
            "backlog_at_window_end": lag_at_end[region],
            "producer_throttle_max_ms": told_ms,
            "producer_throttled_responses": told,
            "producer_throttle_max_ms_whole_phase": throttle_max_ms(throttles, 0.0, float("inf"))[0],
            "fleet_send_s": report.send_s,
            "fleet_late_sends": fleet.late_sends,
            "fleet_send_failures": dict(fleet.send_failures),
            "fleet_loop_lag_peak_ms": report.loop_lag_peak_ms.get("direct"),
        }
        if flood_end_s is not None:
            bins = recovery_bins(
                report.round_trips,
                report.no_answer,
                region,
                flood_end_s * 1000.0,
                (start_s - s.recovery_before_s) * 1000.0,
                end_s * 1000.0,
                deadline_ms=s.device_deadline_ms,
                sla_ms=s.sla_ms,
                throttles=throttles,
            )
            after_ms, after_told = throttle_max_ms(throttles, flood_end_s, end_s)
            last_told = [at_s for at_s, ms in throttles if ms > 0 and at_s >= flood_end_s]
            regions[region]["recovery"] = {
                "recovered_after_s": recovered_after_s(bins, s.recovered_share),
                "producer_throttle_max_ms_after_flood": after_ms,
                "producer_throttled_responses_after_flood": after_told,
                "producer_last_throttled_after_s": max(last_told) - flood_end_s if last_told else None,
                "bins": bins,
            }
    flood = None
    if flood_report:
        records_per_s, bytes_per_s = rate_between(flood_report["samples"], start_s, flood_end_s or end_s)
        flood = {
            "acked_per_s": records_per_s,
            "acked_bytes_per_s": bytes_per_s,
            **{k: v for k, v in flood_report.items() if k != "samples"},
            "cores": cpu.processes_s.get("flooder", 0.0) / window_s,
        }
    recovery = None
    if stop is not None and flood_end_s is not None:
        after_s = end_s - flood_end_s
        recovery = {
            "flood_s": flood_end_s - start_s,
            "after_flood_s": after_s,
            "stop": {k: v for k, v in stop.items() if k != "flood_end_s"},
            "flooded_backlog_at_flood_end": lag_at_flood_end,
            "flooded_backlog_at_window_end": lag_at_end[REGION_A],
            **backlog_drain(lag_at_flood_end, lag_at_end[REGION_A], after_s, cleared_below=s.rate_per_s),
            "note": "flooded_backlog_at_flood_end is read as the flooder has exited (stop."
            "exited_after_flood_end_s after the flood's end); bins by the capture time of the honest "
            "requests, s after the flood's end (negative: before it); cleared_after_s_estimate: the "
            "backlog at the flood's end over drain_per_s, linear, where the window ended with more than "
            "a second of honest requests (rate_per_s) left",
        }
    document = {
        "phase": phase.name,
        "kind": phase.kind,
        "quota": phase.quota,
        "quota_factor": phase.factor,
        "quota_settle_wait_s": settle_s,
        "window_s": window_s,
        "flood_s": None if flood_end_s is None else flood_end_s - start_s,
        "warmup_s": warmup_s,
        "regions": regions,
        "flooder": flood,
        "recovery": recovery,
        "cpu_cores": _cores(cpu),
        "cpu": {
            "others_s": cpu.others_s,
            "steal_s": cpu.steal_s,
            "broker_jit_s": cpu.broker_jit_s,
            "wall_s": cpu.wall_s,
        },
    }
    env.step(phase_line(document))
    return document


def phase_line(d: Mapping[str, Any]) -> str:
    """One line per phase for the log."""

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    parts = []
    for r, x in d["regions"].items():
        part = (
            f"{r}: p50 {ms(x['p50_ms'])} p99 {ms(x['p99_ms'])} ms, <=50ms {pct(x['within_sla_share'])}, "
            f"answered {pct(x['answered_share'])}"
        )
        if x.get("producer_throttle_max_ms"):
            part += f", told throttle up to {x['producer_throttle_max_ms']:,.0f} ms"
        recovery = x.get("recovery")
        if recovery:
            after = recovery["recovered_after_s"]
            part += ", recovered " + ("never" if after is None else f"after {after:g} s")
        parts.append(part)
    recovery = d.get("recovery")
    if recovery:
        at_end = recovery["flooded_backlog_at_flood_end"]
        parts.append(
            f"backlog {'-' if at_end is None else f'{at_end:,}'} at the flood's end, "
            f"{recovery['flooded_backlog_at_window_end']:,} at the window's"
        )
    flood = d.get("flooder")
    if flood:
        parts.append(
            f"flooder {flood['acked_per_s']:,.0f} rec/s, {flood['acked_bytes_per_s'] / 1e6:.2f} MB/s, "
            f"told throttle up to {flood.get('throttle_cb_max_ms', 0):,.0f} ms"
        )
    cores = d["cpu_cores"]
    parts.append(f"broker {cores.get('broker', 0):.2f} cores")
    return f"  {d['phase']} done: " + "; ".join(parts)


# -- the run ------------------------------------------------------------------------------------------


def quota_of(s: FloodSettings, byte_rate: float) -> dict[str, float | None]:
    """``DeviceQuotas``' fields for a phase under a byte-rate quota."""
    return {
        "producer_byte_rate": _whole(byte_rate),
        "consumer_byte_rate": _whole(s.quota_consumer_byte_rate),
        "request_percentage": s.quota_request_percentage,
    }


def expand(s: FloodSettings, kind: PhaseKind, honest_bytes_per_s: float | None) -> list[Phase]:
    """The phases of ``kind``: one, or one per quota of the sweep."""
    if kind not in ("quota", "flood_quota", "recovery"):
        return [Phase(kind, kind)]
    rates = quota_byte_rates(s.quota_producer_byte_rates, s.quota_factors, honest_bytes_per_s)
    if kind == "recovery":  # without a quota, then under each
        unlimited = [Phase("recovery", kind)]
        return unlimited + [
            Phase(
                f"recovery@{factor:g}x" if factor is not None else f"recovery@{rate:.0f}Bps",
                kind,
                quota_of(s, rate),
                factor,
            )
            for rate, factor in rates
        ]
    if kind == "quota":  # the control: the honest fleets alone under the tightest quota
        rates = [min(rates)]
    many = len(rates) > 1
    phases = []
    for rate, factor in rates:
        tag = f"@{factor:g}x" if factor is not None else f"@{rate:.0f}Bps"
        phases.append(Phase(f"{kind}{tag}" if many else kind, kind, quota_of(s, rate), factor))
    return phases


async def warm_up(env: Env) -> dict[str, Any]:
    """A discarded phase, honest fleets and an unthrottled flood, so the broker's JIT compiles both
    paths before anything is measured (the first phase measured on a fresh broker had its JIT
    compilers at half a core); then fresh topics, and a wait for the JIT compilers to go quiet."""
    s = env.s
    if s.broker_warmup_s <= 0:
        return {}
    started_s = time.monotonic()
    jit_before = jit_thread_ticks(env.broker_pid)
    env.step(f"warming the broker up: honest fleets and a flood for {s.broker_warmup_s:g} s (discarded)")
    await measure_phase(env, Phase("warmup", "flood"), 0.0, s.broker_warmup_s)
    await fresh_topics(env)
    env.step("waiting for the broker's JIT compilers to go quiet")
    settle_started_s = time.monotonic()
    while True:
        before = jit_thread_ticks(env.broker_pid)
        await asyncio.sleep(JIT_QUIET_WINDOW_S)
        share = jit_seconds(before, jit_thread_ticks(env.broker_pid)) / JIT_QUIET_WINDOW_S
        quiet = share <= s.jit_quiet_share
        if quiet or time.monotonic() - settle_started_s >= s.jit_settle_timeout_s:
            break
    if not quiet:
        log.warning("the broker's JIT compilers still use %.0f%% of a core", 100 * share)
    return {
        "wall_s": time.monotonic() - started_s,
        "broker_jit_s": jit_seconds(jit_before, jit_thread_ticks(env.broker_pid)),
        "jit_settle_s": time.monotonic() - settle_started_s,
        "jit_quiet": quiet,
    }


async def run_phases(env: Env) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """The warm-up, then every phase in order, on fresh topics each; the quotas sized by the honest
    rate of the first phase."""
    s = env.s
    if s.phases[0] in ("quota", "flood_quota") and not s.quota_producer_byte_rates:
        raise ValueError("the first phase is under a quota: set EDGESTREAM_FLOOD_QUOTA_PRODUCER_BYTE_RATES")
    warmup = await warm_up(env)
    done: list[dict[str, Any]] = []
    honest: dict[str, Any] = {}
    for kind in s.phases:
        for phase in expand(s, kind, honest.get("bytes_per_s")):
            if done:
                took_s = await fresh_topics(env)
                env.step(f"both regions' topics deleted and made again, empty ({took_s:.1f} s)")
            duration_s = s.recovery_flood_s + s.recovery_s if phase.kind == "recovery" else s.duration_s
            document = await measure_phase(env, phase, s.warmup_s, duration_s)
            done.append(document)
            if not honest:
                honest = honest_produce(document)
                env.step(
                    f"  a region's honest fleet produced {honest['records_per_s']:.0f} records/s of "
                    f"{honest['record_bytes']:.0f} B: about {honest['bytes_per_s']:,.0f} B/s of requests"
                )
    return warmup, done, honest


def run_bench(settings: FloodSettings, console: Console) -> dict[str, Any]:
    """The whole run; every process it started is stopped, and its home removed, when it returns or
    raises."""
    started_s = time.monotonic()
    timestamp = datetime.now(UTC).isoformat(timespec="seconds")
    before = {"loadavg_1m_at_start": round(os.getloadavg()[0], 2), "others_at_start": foreign_processes()}
    code = code_facts()
    home = Path(tempfile.mkdtemp(prefix="edgestream-flood-"))
    broker_settings = BrokerSettings(home=home / "broker", jit=settings.broker_jit)
    heap.enable()  # each fleet freezes what the bench holds before it sends (Fleet.run)
    try:
        console.log(f"home {home}; building models")
        store = ModelStore(home / "models")
        for name in MODEL_FOR_KIND.values():
            for size in ("medium", "tiny"):
                store.get(name, size)
        keyring = keyfile.create(home / "keys.json", REGIONS)
        console.log(f"starting the Kafka broker ({broker_settings.kafka_version}, TLS)")
        with running_broker(broker_settings) as state:
            admin = state.kafka()
            asyncio.run(ensure_topics(admin, all_topics(REGIONS)))
            if state.security_protocol == "SSL":
                asyncio.run(apply_policy(admin, REGIONS))
            env = Env(
                settings,
                console,
                home,
                admin,
                {r: state.kafka(Identity.edge(r)) for r in REGIONS},
                state.kafka(Identity.device(REGION_A)),
                state.tls_root,
                keyring,
                state.pid,
            )
            env.step(f"broker at {state.bootstrap} ({state.security_protocol}); topics and ACLs made")
            warmup, phases, honest = eventloop.run(run_phases(env), "uvloop")
            env.step("stopping the Kafka broker")
    finally:
        if settings.keep_home:
            console.log(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
    return {
        "bench": "flood",
        "timestamp": timestamp,
        "wall_s": time.monotonic() - started_s,
        "machine": {**machine_facts(broker_settings.kafka_version), **before},
        "code": code,
        "settings": settings.model_dump(mode="json", exclude={"out_dir", "keep_home"}),
        "regions": {"flooded": REGION_A, "other": REGION_B},
        "flood_device": FLOOD_DEVICE,
        "broker_warmup": warmup,
        "honest_produce": honest,
        "phases": phases,
    }
