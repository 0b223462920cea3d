"""``make faults``: the fault scenarios of ``scenarios.py`` (``tests/faults`` runs them shorter), longer,
in one report.

kill -9 cycles, a zombie, a 1 -> 3 -> 1 rebalance, a hostile corpus and the poison corpus (issue 12:
every hostile kind with the worker's default settings), each on a fresh region of one local broker,
then broker restarts on a broker of their own and node kills (a follower, then the active controller)
on a 3-node cluster of their own (``cluster_kill``); the exactly-once checker is
``checker.py``'s. Writes ``bench/results/faults.json`` (per scenario: sent, results,
dead letters by reason, lost, duplicated, false replay flags, worker restarts, wall time, and every
violation with examples) and prints a table. Exits 1 when the invariant broke anywhere; the home with
every worker's log is then kept and named, and the seed in the JSON replays the run.

Settings come from ``EDGESTREAM_FAULTS_*``, e.g. ``EDGESTREAM_FAULTS_KILL_CYCLES=3
EDGESTREAM_FAULTS_SCENARIOS='["kill9"]'`` for a quick look. With ``EDGESTREAM_FAULTS_MERGE=true`` the
scenarios run replace their earlier reports in an existing ``faults.json`` and the rest are kept (the
document's ``merged`` names what was kept from which run).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import aiokafka
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench import REPO_ROOT, RESULTS_DIR
from bench.faults.cluster import cluster_kill_on_own_cluster
from bench.faults.env import FaultEnv, prepare_home
from bench.faults.scenarios import (
    ScenarioReport,
    broker_restart,
    hostile,
    kill9,
    poison,
    rebalance,
    shrunk,
    zombie,
)
from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.local.broker.process import LocalBroker
from edgestream.workers.local.broker.settings import BrokerSettings

ScenarioName = Literal[
    "kill9", "zombie", "rebalance", "hostile", "poison", "shrunk", "broker_restart", "cluster_kill"
]
OWN_BROKERS: frozenset[ScenarioName] = frozenset({"broker_restart", "cluster_kill"})
"""Scenarios that start brokers of their own (the shared broker is started only for the others)."""


class FaultsSettings(BaseSettings):
    """Settings of ``python -m bench.faults`` (``EDGESTREAM_FAULTS_*``)."""

    model_config = SettingsConfigDict(
        env_prefix="EDGESTREAM_FAULTS_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    scenarios: tuple[ScenarioName, ...] = (
        "kill9",
        "zombie",
        "rebalance",
        "hostile",
        "poison",
        "shrunk",
        "broker_restart",
        "cluster_kill",
    )
    """Which scenarios to run, in this order."""
    seed: int = 20261123
    """Seeds kill timings, stop points and the hostile corpus."""
    rate_per_s: float = Field(default=150.0, gt=0)
    """Steady traffic of the kill, zombie, rebalance and broker restart scenarios."""
    kill_cycles: int = Field(default=10, ge=1)
    """kill -9 and restart cycles."""
    zombie_stopped_past_s: float = Field(default=5.0, ge=0)
    """How long the zombie stays stopped after the live worker has taken its partitions over."""
    broker_restarts: int = Field(default=2, ge=1)
    """Broker stop/start cycles on the same ports."""
    broker_outage_s: float = Field(default=3.0, ge=0)
    """How long the broker stays down each time (on top of its stop and start)."""
    cluster_outage_s: float = Field(default=5.0, ge=0)
    """How long a killed cluster node stays down at least, from its kill to its restart."""
    hostile_good: int = Field(default=5000, ge=1)
    """Good records in the hostile scenario."""
    hostile_bad: int = Field(default=5000, ge=1)
    """Malformed records in the hostile scenario (every category, then at random)."""
    hostile_rate_per_s: float = Field(default=1000.0, gt=0)
    """Rate the hostile stream is produced at."""
    poison_good: int = Field(default=6000, ge=1)
    """Good records in the poison scenario."""
    poison_bad: int = Field(default=2500, ge=1)
    """Hostile records in the poison scenario (every category, then at random), the flood not counted."""
    poison_flood: int = Field(default=800, ge=0)
    """Records of the one flooding device in the poison scenario."""
    poison_flood_bursts: int = Field(default=4, ge=1)
    """Bursts the flood comes in."""
    poison_large: int = Field(default=20, ge=5)
    """Hostile records about a MiB large (near and over the default envelope limit)."""
    poison_rate_per_s: float = Field(default=800.0, gt=0)
    """Rate the poison stream is produced at."""
    worker_transactions: Literal["per_partition", "per_worker"] | None = None
    """Every worker's exactly-once sink (``EDGESTREAM_WORKER_TRANSACTIONS``); None: the worker's default.
    The harness reads it from the environment itself (``workers.WORKER_TRANSACTIONS_ENV``), so the CI
    tests (``tests/faults``) honour it too."""
    merge: bool = False
    """Replace only this run's scenarios in an existing ``faults.json``, keeping the others' reports."""
    out_dir: Path = RESULTS_DIR
    """Where ``faults.json`` goes."""
    keep_home: bool = False
    """Keep the throwaway home (broker data, worker logs) even when everything held."""


def _scenario_calls(
    settings: FaultsSettings,
) -> dict[ScenarioName, Callable[[FaultEnv], Awaitable[ScenarioReport]]]:
    rate = settings.rate_per_s
    return {
        "kill9": lambda env: kill9(env, cycles=settings.kill_cycles, rate_per_s=rate),
        "zombie": lambda env: zombie(env, rate_per_s=rate, stopped_past_s=settings.zombie_stopped_past_s),
        "rebalance": lambda env: rebalance(env, rate_per_s=rate),
        "hostile": lambda env: hostile(
            env, good=settings.hostile_good, bad=settings.hostile_bad, rate_per_s=settings.hostile_rate_per_s
        ),
        "poison": lambda env: poison(
            env,
            good=settings.poison_good,
            bad=settings.poison_bad,
            flood=settings.poison_flood,
            flood_bursts=settings.poison_flood_bursts,
            large=settings.poison_large,
            rate_per_s=settings.poison_rate_per_s,
        ),
        "shrunk": lambda env: shrunk(env, rate_per_s=rate),
        "broker_restart": lambda env: broker_restart(
            env, rate_per_s=rate, outage_s=settings.broker_outage_s, restarts=settings.broker_restarts
        ),
        "cluster_kill": lambda env: cluster_kill_on_own_cluster(
            env, rate_per_s=rate, outage_s=settings.cluster_outage_s
        ),
    }


def _describer(progress: Progress, task: TaskID, name: str) -> Callable[[str], None]:
    def describe(message: str) -> None:
        progress.update(task, description=message[:100])

    return describe


async def run_faults(settings: FaultsSettings, home: Path, progress: Progress) -> dict[str, Any]:
    """Start the shared broker, run each scenario, return the JSON document."""
    started = time.monotonic()
    log_line = progress.console.log
    overall = progress.add_task("scenarios", total=len(settings.scenarios))
    log_line("building the reference models (cached in the run's home)")
    versions = await asyncio.to_thread(prepare_home, home)
    broker = LocalBroker(BrokerSettings(home=home / "kafka"))
    shared = KafkaSettings()  # unused when every scenario starts brokers of its own
    tls_root = None
    if set(settings.scenarios) - OWN_BROKERS:
        log_line("starting the shared Kafka broker")
        state = await asyncio.to_thread(broker.start, 120)
        shared, tls_root = state.kafka(), state.tls_root
    calls = _scenario_calls(settings)
    reports: list[dict[str, Any]] = []
    try:
        for name in settings.scenarios:
            task = progress.add_task(name, total=None)
            env = FaultEnv(
                bootstrap=shared,
                home=home,
                run_dir=home / "runs" / name,
                served_versions=versions,
                tls_root=tls_root,
                seed=settings.seed,
                on_event=_describer(progress, task, name),
            )
            scenario_started = time.monotonic()
            try:
                report = await calls[name](env)
                entry = report.as_dict()
                verdict = "holds" if not report.violations() else f"BROKEN: {'; '.join(report.violations())}"
                log_line(f"{report.name}: invariant {verdict} ({report.wall_s:.0f} s)")
            except Exception as err:  # a scenario that cannot finish is a result too: record it, go on
                entry = {
                    "name": name,
                    "error": repr(err),
                    "traceback": traceback.format_exc(),
                    "wall_s": round(time.monotonic() - scenario_started, 2),
                    "violations": [f"did not finish: {err!r}"],
                }
                log_line(f"[red]{name} did not finish: {err!r}")
            reports.append(entry)
            progress.update(task, description=f"{name}: done", total=1, completed=1)
            progress.advance(overall)
    finally:
        await asyncio.to_thread(broker.stop)
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seed": settings.seed,
        "settings": settings.model_dump(mode="json"),
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "aiokafka": aiokafka.__version__,
            "kafka": BrokerSettings().kafka_version,
        },
        "source": _source_state(),
        "total_wall_s": round(time.monotonic() - started, 1),
        "invariant_holds": all(not r["violations"] for r in reports),
        "scenarios": reports,
    }


def _source_state() -> dict[str, Any]:
    """The commit the run measured, and the library files changed on top of it (work in progress)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    changed = git("status", "--porcelain", "--", "workers", "pipeline", "topics", "edgestream")
    return {"commit": git("rev-parse", "HEAD") or None, "uncommitted": changed.splitlines()}


def _table(document: dict[str, Any]) -> Table:
    table = Table(title=f"edgestream faults (seed {document['seed']})", title_justify="left")
    for col in (
        "scenario",
        "sent",
        "results",
        "dead letters",
        "lost",
        "dup",
        "false replays",
        "unreplied",
        "restarts",
        "wall s",
        "invariant",
    ):
        table.add_column(col, justify="left" if col in ("scenario", "dead letters", "invariant") else "right")
    for r in document["scenarios"]:
        if "error" in r:
            table.add_row(r["name"], *["-"] * 8, str(r["wall_s"]), "[red]did not finish")
            continue
        reasons = ", ".join(f"{k} {n}" for k, n in r["dead_letters"].items()) or "-"
        table.add_row(
            r["name"],
            str(r["sent"]),
            str(r["results"]),
            reasons
            if len(reasons) < 60
            else f"{sum(r['dead_letters'].values())} in {len(r['dead_letters'])} reasons",
            str(r["lost"]),
            str(r["duplicated"]),
            str(r["false_replays"]),
            str(r.get("extra", {}).get("replies", {}).get("missing", "-")),
            str(r["worker_restarts"]),
            f"{r['wall_s']:.0f}",
            "holds" if not r["violations"] else f"[red]broken ({len(r['violations'])})",
        )
    return table


def merge_into(earlier: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    """``document`` plus the scenario reports of ``earlier`` it did not rerun, in the earlier order
    (rerun ones in their place, new ones at the end); ``merged`` names the run each kept report is from
    (its time, commit and settings)."""
    fresh = {r["name"]: r for r in document["scenarios"]}
    earlier_reports = earlier.get("scenarios", [])
    order = [r["name"] for r in earlier_reports] + [
        n for n in fresh if n not in {r["name"] for r in earlier_reports}
    ]
    by_name = {**{r["name"]: r for r in earlier_reports}, **fresh}
    scenarios = [by_name[name] for name in order]
    run = {
        "generated_at": earlier.get("generated_at"),
        "commit": (earlier.get("source") or {}).get("commit"),
        "settings": earlier.get("settings"),
    }
    kept_from = {m["scenario"]: m for m in earlier.get("merged", [])}  # kept by an earlier merge already
    merged = [kept_from.get(name, {"scenario": name, **run}) for name in order if name not in fresh]
    return {
        **document,
        "scenarios": scenarios,
        "merged": merged,
        "invariant_holds": all(not r["violations"] for r in scenarios),
    }


def main() -> int:
    """``python -m bench.faults``."""
    console = Console() if sys.stdout.isatty() else Console(width=150)
    logging.basicConfig(level=logging.WARNING, handlers=[RichHandler(console=console)], format="%(message)s")
    # The bench's own clients reconnect through the broker outages on purpose; workers log to files.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    settings = FaultsSettings()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    home = Path(tempfile.mkdtemp(prefix="edgestream-faults-"))
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    try:
        with progress:
            document = asyncio.run(run_faults(settings, home, progress))
    except KeyboardInterrupt:
        console.print(f"interrupted: processes stopped, nothing written; logs in {home}")
        return 130
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    out = settings.out_dir / "faults.json"
    if settings.merge and out.exists():
        document = merge_into(json.loads(out.read_text()), document)
    out.write_text(json.dumps(document, indent=2) + "\n")
    console.print(_table(document))
    console.print(f"total {document['total_wall_s']} s; wrote {out}")
    if document["invariant_holds"]:
        if not settings.keep_home:
            shutil.rmtree(home, ignore_errors=True)
        return 0
    for r in document["scenarios"]:
        for violation in r["violations"]:
            console.print(f"[red]{r['name']}: {violation}")
    console.print(f"worker logs and broker data kept in {home}")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
