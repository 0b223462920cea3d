"""`edgestream broker ...`: resolve, start, stop and inspect the local Kafka broker (KRaft, loopback)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console

if TYPE_CHECKING:
    from edgestream.workers.local.broker.process import LocalBroker

app = typer.Typer(
    help="The local Apache Kafka broker (one KRaft node on 127.0.0.1) for development and tests.",
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


def _broker(home: Path | None = None) -> LocalBroker:
    """The broker for the settings from the environment, with ``--home`` on top."""
    from pydantic import ValidationError

    from edgestream.workers.local.broker.process import LocalBroker
    from edgestream.workers.local.broker.settings import BrokerSettings

    try:
        settings = BrokerSettings() if home is None else BrokerSettings(home=home)
    except ValidationError as e:
        _fail(f"bad broker settings: {e}")
    return LocalBroker(settings)


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
    timeout_s: Annotated[
        float, typer.Option("--timeout-s", min=1, help="How long to wait for the broker to answer.")
    ] = 90.0,
) -> None:
    """Start the broker in the background (or find the running one) and wait until it answers."""
    from edgestream.pipeline.errors import BrokerError

    broker = _broker(home)
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


@app.command()
def stop(
    home: Home = None,
    timeout_s: Annotated[
        float, typer.Option("--timeout-s", min=1, help="Grace period after SIGTERM before SIGKILL.")
    ] = 30.0,
) -> None:
    """Stop the broker (SIGTERM, SIGKILL after the grace period). Succeeds when none is running."""
    from edgestream.pipeline.errors import BrokerError

    broker = _broker(home)
    try:
        stopped = broker.stop(timeout_s=timeout_s)
    except BrokerError as e:
        _fail(str(e))
    _out.print("Kafka broker stopped" if stopped else "Kafka broker was not running")


@app.command()
def status(home: Home = None) -> None:
    """Say whether the broker runs, with its pid, address and logs; exit code 1 when it does not."""
    from edgestream.workers.local.broker.probe import ping

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


@app.command("reload-tls")
def reload_tls(home: Home = None) -> None:
    """Have the running broker re-read its trust bundle and its own certificate, without a restart.

    Run it after `certs rotate-ca` (trust the new CA beside the old one), after re-issuing the broker's
    certificate from the new CA (`certs issue broker`), and after `certs retire-ca`.
    """
    from edgestream.pipeline.errors import EdgestreamError

    broker = _broker(home)
    try:
        state = broker.reload_tls()
    except EdgestreamError as e:
        _fail(str(e))
    _out.print(
        f"broker at {state.bootstrap} re-read its trust bundle ({state.tls_root}/ca-bundle.pem) "
        "and its current certificate"
    )
