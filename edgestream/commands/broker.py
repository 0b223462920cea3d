"""`edgestream broker ...`: resolve, start, stop and inspect the local Kafka broker (KRaft, loopback)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console

if TYPE_CHECKING:
    from edgestream.workers.local.broker.cluster import LocalCluster
    from edgestream.workers.local.broker.process import LocalBroker
    from edgestream.workers.local.broker.settings import BrokerSettings

app = typer.Typer(
    help="The local Apache Kafka broker (one KRaft node on 127.0.0.1, or a cluster of three) "
    "for development and tests.",
    no_args_is_help=True,
)

EXIT_ERROR = 1
EXIT_NOT_RUNNING = 1

_out = Console(highlight=False, soft_wrap=True)
_err = Console(stderr=True, highlight=False, soft_wrap=True)

Home = Annotated[
    Path | None,
    typer.Option(
        "--home",
        help="Local state directory; the broker lives in HOME/broker "
        "(default: $EDGESTREAM_BROKER_HOME, else .edgestream).",
        show_default=False,
        file_okay=False,
    ),
]


def _fail(message: str) -> NoReturn:
    _err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(EXIT_ERROR)


Brokers = Annotated[
    int | None,
    typer.Option(
        "--brokers",
        help="Nodes: 1 (one broker in HOME/broker) or 3 (a KRaft cluster in HOME/cluster: three "
        "replicas, min ISR 2) (default: $EDGESTREAM_BROKER_BROKERS, else 1).",
        show_default=False,
    ),
]


def _settings(home: Path | None = None, brokers: int | None = None) -> BrokerSettings:
    """The broker settings from the environment, with ``--home`` and ``--brokers`` on top."""
    from pydantic import ValidationError

    from edgestream.workers.local.broker.settings import BrokerSettings

    given = {k: v for k, v in {"home": home, "brokers": brokers}.items() if v is not None}
    try:
        return BrokerSettings(**given)  # type: ignore[arg-type]
    except ValidationError as e:
        _fail(f"bad broker settings: {e}")


def _broker(home: Path | None = None) -> LocalBroker:
    """The single broker for the settings from the environment, with ``--home`` on top."""
    from edgestream.workers.local.broker.process import LocalBroker

    return LocalBroker(_settings(home))


def _cluster(home: Path | None = None, brokers: int | None = None) -> LocalCluster:
    """The home's local cluster."""
    from edgestream.workers.local.broker.cluster import LocalCluster

    return LocalCluster(_settings(home, brokers))


@app.command()
def fetch(
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print nothing unless something goes wrong.")
    ] = False,
) -> None:
    """Resolve the broker's jars with Maven into the cache (once; instant when cached)."""
    from edgestream.pipeline.errors import BrokerError

    jars = _broker().jars
    version = jars.kafka_version
    if jars.ready():
        if not quiet:
            _out.print(f"Kafka {version} jars already cached in {jars.libs_dir}")
        return
    if not quiet:
        _out.print(f"Resolving Kafka {version} jars with Maven into {jars.libs_dir} ...")
    started_s = time.monotonic()
    try:
        libs_dir = jars.fetch(quiet=quiet)
    except BrokerError as e:
        _fail(str(e))
    if not quiet:
        jar_count = len(list(libs_dir.glob("*.jar")))
        _out.print(f"Kafka {version}: {jar_count} jars in {libs_dir} ({time.monotonic() - started_s:.1f} s)")


@app.command()
def start(
    home: Home = None,
    brokers: Brokers = None,
    timeout_s: Annotated[
        float, typer.Option("--timeout-s", min=1, help="How long to wait for the broker to answer.")
    ] = 90.0,
) -> None:
    """Start the broker in the background (or find the running one) and wait until it answers.

    With --brokers 3, a cluster of three KRaft nodes (each broker and controller) on ports of their own,
    started together; it returns once every node answers and the metadata lists all three.
    """
    from edgestream.pipeline.errors import BrokerError

    if _settings(home, brokers).brokers > 1:
        _start_cluster(_cluster(home, brokers), timeout_s)
        return
    broker = _broker(home)
    if _cluster(home).status() is not None:
        _fail(f"a local cluster runs in {_cluster(home).root}; stop it first (edgestream broker stop)")
    running = broker.status()
    try:
        if running is None and not broker.jars.ready():
            _out.print(f"Resolving Kafka {broker.jars.kafka_version} jars with Maven (first run) ...")
            broker.jars.fetch(quiet=True)
        started_s = time.monotonic()
        state = broker.start(timeout_s=timeout_s)
    except BrokerError as e:
        _fail(str(e))
    if running is not None and running.pid == state.pid:
        _out.print(f"Kafka broker already running (pid {state.pid})")
    else:
        _out.print(f"Kafka broker started in {time.monotonic() - started_s:.1f} s (pid {state.pid})")
    _out.print(f"bootstrap: {state.bootstrap}")
    _out.print(f"logs:      {state.server_log}")


def _start_cluster(cluster: LocalCluster, timeout_s: float) -> None:
    from edgestream.pipeline.errors import BrokerError

    running = cluster.status()
    try:
        if running is None and not cluster.jars_ready():
            _out.print("Resolving the Kafka jars with Maven (first run) ...")
        started_s = time.monotonic()
        state = cluster.start(timeout_s=timeout_s)
    except BrokerError as e:
        _fail(str(e))
    was = {s.pid for s in running.running} if running is not None else set()
    if was and was == {s.pid for s in state.running}:
        _out.print(f"Kafka cluster already running ({len(state.running)} nodes)")
    else:
        took_s = time.monotonic() - started_s
        _out.print(f"Kafka cluster of {len(state.nodes)} nodes started in {took_s:.1f} s")
    _out.print(f"bootstrap: {state.bootstrap}")
    _out.print(f"logs:      {cluster.root}/node-<id>/logs/server.log")


@app.command()
def stop(
    home: Home = None,
    timeout_s: Annotated[
        float, typer.Option("--timeout-s", min=1, help="Grace period after SIGTERM before SIGKILL.")
    ] = 30.0,
) -> None:
    """Stop the broker, or every node of the local cluster (SIGTERM, SIGKILL after the grace period).
    Succeeds when none is running."""
    from edgestream.pipeline.errors import BrokerError

    broker = _broker(home)
    cluster = _cluster(home)
    try:
        nodes = cluster.stop(timeout_s=timeout_s)
        stopped = broker.stop(timeout_s=timeout_s)
    except BrokerError as e:
        _fail(str(e))
    if nodes:
        _out.print(f"Kafka cluster stopped ({nodes} nodes were running)")
    if stopped or not nodes:
        _out.print("Kafka broker stopped" if stopped else "Kafka broker was not running")


@app.command()
def status(home: Home = None) -> None:
    """Say whether the broker runs, with its pid, address and logs; exit code 1 when it does not.

    For a local cluster: each node (id, pid, ports, alive), the active controller and the
    under-replicated partitions; exit code 1 when no node runs.
    """
    from edgestream.workers.local.broker.probe import ping

    cluster = _cluster(home)
    if cluster.plan() is not None and cluster.status() is not None:
        _cluster_status(cluster)
        return
    broker = _broker(home)
    state = broker.status()
    if state is None:
        _out.print(f"Kafka broker not running (home {broker.root})")
        raise typer.Exit(EXIT_NOT_RUNNING)
    answering = ping(state.kafka(), cluster_id=broker.cluster_id())
    answers = "answering" if answering else "NOT answering metadata requests"
    _out.print(f"Kafka broker running (pid {state.pid}, {answers})")
    _out.print(f"bootstrap:  {state.bootstrap}")
    _out.print(f"controller: {state.controller}")
    _out.print(f"logs:       {state.server_log}")
    _out.print(f"data:       {state.data_dir}")


def _cluster_status(cluster: LocalCluster) -> None:
    from aiokafka.errors import KafkaError
    from rich.table import Table

    from edgestream.pipeline.errors import BrokerError

    state = cluster.status()
    if state is None:
        _out.print(f"Kafka cluster not running (home {cluster.root})")
        raise typer.Exit(EXIT_NOT_RUNNING)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # a dead node's refusals, reported below
    try:
        health = cluster.health()
    except (BrokerError, KafkaError, OSError, TimeoutError) as e:  # the nodes are still shown
        health = None
        _err.print(f"[yellow]the cluster did not describe itself:[/yellow] {e!r}")
    table = Table(title=f"Kafka cluster {state.plan.cluster_id}", title_justify="left")
    for column in ("node", "pid", "port", "controller port", "alive", "role"):
        table.add_column(column, justify="left" if column in ("alive", "role") else "right")
    for node in state.plan.nodes:
        running = state.nodes[node.node_id]
        role = ""
        if health is not None:
            role = "active controller" if node.node_id == health.quorum.leader_id else "voter"
            if running is not None and node.node_id not in health.brokers:
                role += ", not registered"
        table.add_row(
            str(node.node_id),
            str(running.pid) if running is not None else "-",
            str(node.port),
            str(node.controller_port),
            "yes" if running is not None else "[red]no",
            role,
        )
    _out.print(table)
    _out.print(f"bootstrap: {state.bootstrap}")
    if health is None:
        return
    _out.print(f"active controller: node {health.quorum.leader_id} (epoch {health.quorum.leader_epoch})")
    short = health.under_replicated
    _out.print(f"under-replicated partitions: {len(short)}")
    for line in short[:20]:
        _out.print(f"  {line}")
    if len(short) > 20:
        _out.print(f"  ... and {len(short) - 20} more")


@app.command("reload-tls")
def reload_tls(home: Home = None) -> None:
    """Have the running broker re-read its trust bundle and its own certificate, without a restart.

    Run it after `certs rotate-ca` (trust the new CA beside the old one), after re-issuing the broker's
    certificate from the new CA (`certs issue broker`), and after `certs retire-ca`. On a local cluster
    the nodes reload one at a time; a node that does not run is named, the others still reload, and the
    exit code is 1.
    """
    from edgestream.pipeline.errors import EdgestreamError

    cluster = _cluster(home)
    if cluster.plan() is not None and cluster.status() is not None:
        _reload_cluster(cluster)
        return
    broker = _broker(home)
    try:
        state = broker.reload_tls()
    except EdgestreamError as e:
        _fail(str(e))
    _out.print(
        f"broker at {state.bootstrap} re-read its trust bundle ({state.tls_root}/ca-bundle.pem) "
        "and its current certificate"
    )


def _reload_cluster(cluster: LocalCluster) -> None:
    """Every node of the cluster, one at a time; exit code 1 when any node did not reload."""
    from edgestream.pipeline.errors import EdgestreamError

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # a dead node's refusals, reported below
    try:
        report = cluster.reload_tls()
    except EdgestreamError as e:
        _fail(str(e))
    for node_id in report.reloaded:
        _out.print(f"node {node_id} re-read its trust bundle and its current certificate")
    for why in (report.failed[node_id] for node_id in sorted(report.failed)):
        _err.print(f"[red]error:[/red] {why}")
    if not report.ok:
        raise typer.Exit(EXIT_ERROR)
