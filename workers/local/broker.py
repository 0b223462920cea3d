"""The local Apache Kafka broker: one KRaft node (broker + controller) on loopback, for development and tests.

The broker's jars are resolved once with Maven from ``deploy/kafka/pom.xml`` into a cache outside git;
``LocalBroker.start`` formats the storage, renders ``server.properties`` from code, spawns the JVM in its
own session and returns only once the broker answers a metadata request. Its state (pid, addresses) lives
in ``<home>/broker/state.json`` so ``start``, ``stop`` and ``status`` work across processes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgestream.pipeline.errors import BrokerError
from edgestream.pipeline.security.certificates import PRINCIPAL_MAPPING_RULES
from edgestream.pipeline.security.identities import SUPER_USERS, Identity
from edgestream.pipeline.security.pki import Pki, TlsFiles
from edgestream.pipeline.settings import Kafka, KafkaSettings, kafka_settings

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The checkout edgestream is installed from (editable): ``deploy/`` lives beside ``workers/``."""
POM_PATH = REPO_ROOT / "deploy" / "kafka" / "pom.xml"
"""The Maven project that lists the broker's jars."""
LOG4J_CONFIG_PATH = REPO_ROOT / "deploy" / "kafka" / "log4j2.properties"
"""log4j2 configuration: the broker logs into ``${kafka.logs.dir}/server.log``."""

MIN_JAVA_MAJOR = 17
"""Kafka 4.x brokers need Java 17 or newer."""
INSTALL_HINT = "apt-get install openjdk-17-jre-headless maven"
"""What to install when ``java`` or ``mvn`` is missing or too old."""
NODE_ID = 1
"""The single node's id; it is also the only controller quorum voter."""
LOOPBACK = "127.0.0.1"

_MARKER_NAME = ".complete"
_TAIL_LINES = 30
_POLL_INTERVAL_S = 0.1
_PROBE_TIMEOUT_S = 5.0
_PORT_RETRIES = 3
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_LOG_LINE_RE = re.compile(r"^\[[^\]]+\] ")
_LOG_ERROR_RE = re.compile(r"^\[[^\]]+\] (ERROR|FATAL) ")
_BIND_FAILED_RE = re.compile(r"failed to bind to \S+:(\d+)")
_JAVA_VERSION_RE = re.compile(r'version "(\d+)(?:\.(\d+))?')


class BrokerSettings(BaseSettings):
    """Settings of the local broker (``EDGESTREAM_BROKER_*``)."""

    model_config = SettingsConfigDict(
        env_prefix="EDGESTREAM_BROKER_", frozen=True, extra="forbid", use_attribute_docstrings=True
    )

    home: Path = Path(".edgestream")
    """Local state directory; the broker's data, logs and state file go in ``<home>/broker/``."""
    port: int = Field(default=0, ge=0, le=65535)
    """PLAINTEXT client port on 127.0.0.1; 0 picks a free port at each start."""
    controller_port: int = Field(default=0, ge=0, le=65535)
    """KRaft controller port on 127.0.0.1; 0 picks a free port at each start."""
    heap_mb: int = Field(default=512, ge=128)
    """Maximum JVM heap (``-Xmx``) of the broker, MiB."""
    kafka_version: str = Field(default="4.1.1", pattern=r"^\d+\.\d+\.\d+$")
    """Version of ``org.apache.kafka:kafka_2.13`` to resolve and run (4.x: KRaft only)."""
    cache_dir: Path | None = None
    """Root of the jar cache (jars in ``<cache_dir>/kafka-<version>/libs``); None: ``~/.cache/edgestream``."""
    security: Literal["tls", "plaintext"] = "tls"
    """``tls``: the client listener speaks TLS 1.3 only and requires a client certificate from the
    local CA (``<home>/tls``, made on first start); principals come from certificate subjects and ACLs
    are enforced (StandardAuthorizer, nothing allowed without an ACL; ``broker`` and ``admin`` are super
    users). ``plaintext``: no encryption, no authentication, no ACLs; only when asked for explicitly."""
    extra_config: dict[str, str] = Field(default_factory=dict)
    """Broker properties that win over the generated ones (e.g. an authorizer for a test)."""


@dataclass(frozen=True, slots=True)
class BrokerState:
    """A started broker, as saved in ``<home>/broker/state.json``."""

    bootstrap: str
    """``host:port`` of the PLAINTEXT listener, for ``bootstrap_servers``."""
    controller: str
    """``host:port`` of the KRaft controller listener."""
    pid: int
    """Process id of the broker's JVM; -1 for a broker edgestream did not start."""
    log_dir: Path
    """Directory of ``server.log`` (log4j2) and ``broker.out`` (the JVM's stdout and stderr)."""
    data_dir: Path
    """Kafka's ``log.dirs``: the KRaft metadata log and the topic partitions."""
    started_at: float
    """Wall-clock start time, seconds since the epoch."""
    security_protocol: str = "PLAINTEXT"
    """``SSL`` (mutual TLS, ACLs) or ``PLAINTEXT`` on the client listener."""
    tls_root: Path | None = None
    """The PKI directory whose CA the broker trusts (``SSL`` only)."""

    def kafka(self, identity: Identity | None = None, **others: Any) -> KafkaSettings:
        """Client settings for this broker, as ``identity`` (default ``admin``) when it speaks TLS; the
        identity's certificate is issued by the local CA if it has none yet."""
        if self.security_protocol != "SSL":
            return KafkaSettings(bootstrap_servers=self.bootstrap, **others)
        if self.tls_root is None:
            raise BrokerError("the broker speaks TLS but its state names no PKI directory")
        who = identity or Identity.admin()
        files = Pki(self.tls_root).ensure([who])[who]  # issued on first use, reused after
        return KafkaSettings.tls(self.bootstrap, files, **others)

    @property
    def server_log(self) -> Path:
        """The broker's log4j2 log file."""
        return self.log_dir / "server.log"

    def to_json(self) -> str:
        """Serialise for the state file."""
        fields = asdict(self)
        fields["log_dir"] = str(self.log_dir)
        fields["data_dir"] = str(self.data_dir)
        fields["tls_root"] = None if self.tls_root is None else str(self.tls_root)
        return json.dumps(fields, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> BrokerState:
        """Parse a state file; raises ``ValueError`` (or ``KeyError``/``TypeError``) when it is not one."""
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("broker state is not a JSON object")
        return cls(
            bootstrap=str(raw["bootstrap"]),
            controller=str(raw["controller"]),
            pid=int(raw["pid"]),
            log_dir=Path(raw["log_dir"]),
            data_dir=Path(raw["data_dir"]),
            started_at=float(raw["started_at"]),
            security_protocol=str(raw.get("security_protocol", "PLAINTEXT")),
            tls_root=None if raw.get("tls_root") is None else Path(raw["tls_root"]),
        )


@dataclass(frozen=True, slots=True)
class Listener:
    """One listener of the node. A TLS listener is one more entry with ``security_protocol="SSL"``."""

    name: str
    """Listener name, e.g. ``PLAINTEXT``, ``CONTROLLER``, later ``SSL``."""
    port: int
    """TCP port on ``host``."""
    security_protocol: str = "PLAINTEXT"
    """``PLAINTEXT`` or ``SSL`` (the ``ssl.*`` settings then go in the config's extras)."""
    host: str = LOOPBACK
    """Address the listener binds and advertises."""

    @property
    def address(self) -> str:
        """``host:port``."""
        return f"{self.host}:{self.port}"


def broker_config(
    *,
    client_listeners: Sequence[Listener],
    controller: Listener,
    data_dir: Path,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The ``server.properties`` of a single combined broker+controller node, as a dict.

    The first client listener is the inter-broker one. Everything a single node needs for consumer groups
    and transactions is here (replication factors and min.isr of 1, no initial rebalance delay); topics
    are created explicitly (``auto.create.topics.enable=false``). ``extra`` wins over the defaults.
    """
    if not client_listeners:
        raise ValueError("a broker needs at least one client listener")
    listeners = [*client_listeners, controller]
    config = {
        "process.roles": "broker,controller",
        "node.id": str(NODE_ID),
        "controller.quorum.voters": f"{NODE_ID}@{controller.address}",
        "controller.listener.names": controller.name,
        "listeners": ",".join(f"{item.name}://{item.address}" for item in listeners),
        "advertised.listeners": ",".join(f"{item.name}://{item.address}" for item in client_listeners),
        "listener.security.protocol.map": ",".join(
            f"{item.name}:{item.security_protocol}" for item in listeners
        ),
        "inter.broker.listener.name": client_listeners[0].name,
        "log.dirs": str(data_dir),
        "num.partitions": "3",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "3",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "3",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        "log.segment.bytes": str(64 * 1024 * 1024),
        "log.retention.hours": "24",
        "log.retention.check.interval.ms": str(60_000),
        "num.network.threads": "2",
        "num.io.threads": "4",
    }
    config.update(extra or {})
    return config


_PROPERTIES_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_properties(text: str, *, is_key: bool) -> str:
    escaped = "".join(_PROPERTIES_ESCAPES.get(char, char) for char in text)
    if is_key:
        escaped = re.sub(r"([=: ])", r"\\\1", escaped)
        if escaped[:1] in ("#", "!"):
            escaped = "\\" + escaped
    elif escaped[:1] == " ":
        escaped = "\\" + escaped
    return escaped


def render_properties(config: Mapping[str, str]) -> str:
    """Render a Java ``.properties`` file, keys sorted, with the escapes ``java.util.Properties`` reads."""
    lines = ["# Written by edgestream (workers/local/broker.py) at each start; edits are overwritten."]
    lines += [
        f"{_escape_properties(key, is_key=True)}={_escape_properties(value, is_key=False)}"
        for key, value in sorted(config.items())
    ]
    return "\n".join(lines) + "\n"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that is free right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def pick_ports(settings: BrokerSettings) -> tuple[int, int]:
    """The (client, controller) ports: the configured ones, free distinct ports for those set to 0."""
    port = settings.port
    controller_port = settings.controller_port
    while port == 0 or port == controller_port:
        port = free_port()
    while controller_port == 0 or controller_port == port:
        controller_port = free_port()
    return port, controller_port


def new_cluster_id() -> str:
    """A random KRaft cluster id: 16 random bytes, base64url without padding (22 characters)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode("ascii").rstrip("=")
        if not cluster_id.startswith("-"):  # a leading dash reads as an option on the command line
            return cluster_id


def find_executable(name: str) -> str:
    """The path of ``java`` or ``mvn`` on PATH, or a ``BrokerError`` that says what to install."""
    path = shutil.which(name)
    if path is None:
        raise BrokerError(f"`{name}` is not on PATH; the local Kafka broker needs it: {INSTALL_HINT}")
    return path


def parse_java_major(version_output: str) -> int:
    """The major version from ``java -version`` output (``1.8.0_392`` -> 8, ``17.0.15`` -> 17)."""
    match = _JAVA_VERSION_RE.search(version_output)
    if match is None:
        raise BrokerError(f"cannot read the Java version from: {version_output.strip()[:200]!r}")
    major = int(match.group(1))
    if major == 1 and match.group(2) is not None:
        major = int(match.group(2))
    return major


def check_java() -> str:
    """The ``java`` executable, checked to be Java 17 or newer."""
    java = find_executable("java")
    try:
        done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise BrokerError(f"`{java} -version` failed: {err}") from err
    major = parse_java_major(done.stderr + done.stdout)
    if major < MIN_JAVA_MAJOR:
        raise BrokerError(
            f"Kafka needs Java {MIN_JAVA_MAJOR} or newer, `{java}` is Java {major}: {INSTALL_HINT}"
        )
    return java


def _tail(text: str, lines: int = _TAIL_LINES) -> str:
    return "\n".join(_ANSI_RE.sub("", text).rstrip().splitlines()[-lines:])


def _log_errors(text: str, limit: int = 20) -> list[str]:
    """ERROR/FATAL lines of a log4j log with their exception messages and causes, not stack frames."""
    errors: list[str] = []
    in_error = False
    for line in text.splitlines():
        if _LOG_LINE_RE.match(line):
            in_error = _LOG_ERROR_RE.match(line) is not None
            if in_error:
                errors.append(line)
        elif in_error and line.strip() and not line.startswith("\t") and not line.startswith(" "):
            errors.append(line)  # "SomeException: message" or "Caused by: ..."
        if len(errors) >= limit:
            break
    return errors


def _read_from(path: Path, offset: int = 0) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust kill(0)
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock between processes, held for the ``with`` block."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _tcp_open(host: str, port: int, timeout_s: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


async def _answers_metadata(kafka: KafkaSettings, timeout_s: float, cluster_id: str | None) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    bootstrap = kafka.bootstrap_servers
    admin = AIOKafkaAdminClient(
        **kafka.client_kwargs(),
        client_id="edgestream-broker-probe",
        request_timeout_ms=max(1, int(timeout_s * 1000)),
    )
    try:
        async with asyncio.timeout(timeout_s + 1.0):
            await admin.start()
            cluster = await admin.describe_cluster()
    except (KafkaError, OSError, TimeoutError) as err:
        log.debug("metadata request to %s failed: %r", bootstrap, err)
        return False
    finally:
        await admin.close()
    if cluster_id is not None and cluster.get("cluster_id") != cluster_id:
        log.debug("%s answers for cluster %s, not %s", bootstrap, cluster.get("cluster_id"), cluster_id)
        return False
    return bool(cluster.get("brokers"))


def ping(kafka: Kafka, timeout_s: float = _PROBE_TIMEOUT_S, cluster_id: str | None = None) -> bool:
    """True when the broker answers a metadata request (for ``cluster_id``, if given).

    Safe to call with or without a running event loop: the request runs on a loop of its own, in a thread.
    """
    settings = kafka_settings(kafka)
    host, _, port = settings.bootstrap_servers.split(",")[0].rpartition(":")
    if not _tcp_open(host, int(port), timeout_s):
        return False
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="broker-ping") as pool:
        probe = pool.submit(lambda: asyncio.run(_answers_metadata(settings, timeout_s, cluster_id)))
        return probe.result()


async def _alter_with_retries(kafka: KafkaSettings, configs: Mapping[str, str], attempts: int = 6) -> None:
    """``_alter_broker_configs``, tried again when the connection fails: right after an earlier reload
    the broker may refuse a handshake or two while it swaps its SSL engine."""
    from aiokafka.errors import KafkaConnectionError

    for attempt in range(1, attempts + 1):
        try:
            await _alter_broker_configs(kafka, configs)
            return
        except KafkaConnectionError as err:
            if attempt == attempts:
                raise BrokerError(f"could not reach the broker to reload its TLS stores: {err}") from err
            log.info("reload-tls: %s; trying again", err)
            await asyncio.sleep(0.5 * attempt)


async def _alter_broker_configs(kafka: KafkaSettings, configs: Mapping[str, str]) -> None:
    """Set dynamic configs of broker ``NODE_ID`` (AlterConfigs replaces the broker's dynamic set)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(**kafka.client_kwargs(), client_id="edgestream-broker-reload")
    await admin.start()
    try:
        responses = await admin.alter_configs(
            [ConfigResource(ConfigResourceType.BROKER, str(NODE_ID), configs=dict(configs))]
        )
    finally:
        await admin.close()
    for response in responses:
        for error_code, message, _type, name in response.resources:
            if error_code:
                raise BrokerError(f"broker {name} refused the new TLS stores: error {error_code}: {message}")


class _BrokerExited(Exception):
    pass


def _wait_ready(
    kafka: KafkaSettings, cluster_id: str | None, deadline: float, is_alive: Callable[[], bool]
) -> None:
    """Poll until ``bootstrap`` answers metadata for ``cluster_id`` (not some other broker on that port).

    Raises ``TimeoutError`` at ``deadline`` and ``_BrokerExited`` as soon as ``is_alive()`` is false.
    """
    while True:
        if not is_alive():
            raise _BrokerExited
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            raise TimeoutError
        if ping(kafka, timeout_s=min(remaining_s, _PROBE_TIMEOUT_S), cluster_id=cluster_id):
            return
        time.sleep(min(_POLL_INTERVAL_S, max(0.0, deadline - time.monotonic())))


class LocalBroker:
    """Resolve, start, stop and inspect the local single-node broker kept in ``<home>/broker/``."""

    def __init__(self, settings: BrokerSettings) -> None:
        self.settings = settings
        self.root = settings.home.expanduser().resolve() / "broker"
        """All of the broker's local state."""
        self.data_dir = self.root / "data"
        self.log_dir = self.root / "logs"
        self.config_file = self.root / "server.properties"
        self.state_file = self.root / "state.json"
        cache_root = (settings.cache_dir or Path.home() / ".cache" / "edgestream").expanduser()
        self.cache_dir = cache_root.resolve() / f"kafka-{settings.kafka_version}"
        """This Kafka version's jar cache: ``libs/`` and the completion marker."""
        self.libs_dir = self.cache_dir / "libs"
        self._proc: subprocess.Popen[bytes] | None = None

    # -- jars ---------------------------------------------------------------------------------------

    def _pom_sha256(self) -> str:
        try:
            return hashlib.sha256(POM_PATH.read_bytes()).hexdigest()
        except FileNotFoundError as err:
            raise BrokerError(
                f"{POM_PATH} is missing: install edgestream editable from a checkout (pip install -e .)"
            ) from err

    def jars_ready(self) -> bool:
        """True when this version's jars are resolved (by the current pom) into ``libs_dir``."""
        try:
            marker = json.loads((self.cache_dir / _MARKER_NAME).read_text())
        except (OSError, ValueError):
            return False
        return (
            isinstance(marker, dict)
            and marker.get("pom_sha256") == self._pom_sha256()
            and self.libs_dir.is_dir()
        )

    def fetch_jars(self, quiet: bool = False) -> Path:
        """Resolve the broker's jars with Maven into ``libs_dir`` (once; instant when cached).

        ``quiet`` runs Maven with ``-q``; otherwise Maven's output is logged at INFO. On failure the
        ``BrokerError`` carries the tail of Maven's output either way.
        """
        if self.jars_ready():
            return self.libs_dir
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.cache_dir / ".lock"):  # another process may be resolving the same version
            if self.jars_ready():
                return self.libs_dir
            self._resolve(quiet)
        return self.libs_dir

    def _resolve(self, quiet: bool) -> None:
        pom_sha256 = self._pom_sha256()
        mvn = find_executable("mvn")
        check_java()
        staging = Path(tempfile.mkdtemp(prefix="libs.", dir=self.cache_dir))
        command = [
            mvn,
            "-B",
            "-q" if quiet else "--no-transfer-progress",
            "-Dstyle.color=never",
            "-f",
            str(POM_PATH),
            f"-Dkafka.version={self.settings.kafka_version}",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
        ]
        log.info("resolving Kafka %s jars with Maven into %s", self.settings.kafka_version, self.libs_dir)
        started_s = time.monotonic()
        try:
            done = subprocess.run(
                command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
            )
            if not quiet:
                for line in _ANSI_RE.sub("", done.stdout).splitlines():
                    log.info("mvn: %s", line)
            jars = sorted(staging.glob("*.jar"))
            if done.returncode != 0 or not jars:
                raise BrokerError(
                    f"Maven could not resolve Kafka {self.settings.kafka_version} "
                    f"(exit {done.returncode}, {len(jars)} jars); `{' '.join(command)}` said:\n"
                    f"{_tail(done.stdout) or '(no output)'}"
                )
            shutil.rmtree(self.libs_dir, ignore_errors=True)
            staging.rename(self.libs_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        marker = {
            "kafka_version": self.settings.kafka_version,
            "pom_sha256": pom_sha256,
            "jars": [jar.name for jar in jars],
            "resolved_at": time.time(),
        }
        (self.cache_dir / _MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n")
        log.info("resolved %d jars in %.1f s", len(jars), time.monotonic() - started_s)

    # -- state --------------------------------------------------------------------------------------

    def _read_state(self) -> BrokerState | None:
        try:
            text = self.state_file.read_text()
        except FileNotFoundError:
            return None
        try:
            return BrokerState.from_json(text)
        except (ValueError, KeyError, TypeError) as err:
            log.warning("ignoring unreadable broker state %s: %s", self.state_file, err)
            return None

    def _write_state(self, state: BrokerState) -> None:
        partial = self.state_file.with_suffix(".json.partial")
        partial.write_text(state.to_json())
        partial.replace(self.state_file)

    def _is_ours(self, pid: int) -> bool:
        """True when ``pid`` is alive and is the JVM running this home's broker (not a reused pid)."""
        if not _pid_alive(pid):
            return False
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            return False
        except OSError:
            return True  # no procfs to tell: trust the pid
        return b"kafka.Kafka" in cmdline and os.fsencode(self.config_file) in cmdline

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.root / "lock"):
            yield

    def cluster_id(self) -> str | None:
        """The KRaft cluster id the storage was formatted with; None before the first start."""
        try:
            text = (self.data_dir / "meta.properties").read_text()
        except FileNotFoundError:
            return None
        match = re.search(r"^cluster\.id=(\S+)$", text, flags=re.MULTILINE)
        return match.group(1) if match else None

    def status(self) -> BrokerState | None:
        """The running broker's state, or None when none runs (a stale state file counts as none)."""
        state = self._read_state()
        if state is None or not self._is_ours(state.pid):
            return None
        return state

    # -- start --------------------------------------------------------------------------------------

    def start(self, timeout_s: float = 90) -> BrokerState:
        """Start the broker, or return the running one; returns once it answers a metadata request.

        Resolves the jars first when they are not cached (not counted in ``timeout_s``). Idempotent.
        """
        with self._locked():
            existing = self._read_state()
            if existing is not None:
                if self._is_ours(existing.pid):
                    self._await_ready(existing, time.monotonic() + timeout_s, None)
                    log.info("broker already running at %s (pid %d)", existing.bootstrap, existing.pid)
                    return existing
                log.info("removing stale broker state (pid %d is gone)", existing.pid)
                self.state_file.unlink(missing_ok=True)
            java = check_java()
            libs_dir = self.fetch_jars(quiet=True)
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.log_dir.mkdir(parents=True, exist_ok=True)
            deadline = time.monotonic() + timeout_s
            for attempt in range(1, _PORT_RETRIES + 1):
                try:
                    return self._start_once(java, libs_dir, deadline)
                except _PortTaken as err:
                    fixed = {self.settings.port, self.settings.controller_port} - {0}
                    if attempt == _PORT_RETRIES or err.port is None or err.port in fixed:
                        raise BrokerError(str(err)) from err
                    log.info("port %d was taken after we chose it; retrying with new ports", err.port)
            raise AssertionError("unreachable")

    def _tls_config(self, pki: Pki) -> dict[str, str]:
        """The ``ssl.*`` and authorizer settings of a TLS broker; issues its certificates if needed.

        The key store is one PEM file (private key, then certificate) written 0600 next to the config;
        the trust store is the PKI's bundle. Both are re-read without a restart by ``reload_tls``.
        """
        issued = pki.ensure([Identity.broker(), Identity.admin()])
        own = issued[Identity.broker()]
        keystore = self._write_keystore(own)
        return {
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(own.ca_file),
            "ssl.client.auth": "required",
            "ssl.protocol": "TLSv1.3",
            "ssl.enabled.protocols": "TLSv1.3",
            "ssl.endpoint.identification.algorithm": "https",
            "ssl.principal.mapping.rules": PRINCIPAL_MAPPING_RULES,
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found": "false",
            "super.users": ";".join(SUPER_USERS),
        }

    def _write_keystore(self, own: TlsFiles) -> Path:
        keystore = self.root / "keystore.pem"
        fd = os.open(keystore.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(own.key_file.read_bytes())
            out.write(own.cert_file.read_bytes())
        keystore.with_suffix(".tmp").replace(keystore)
        return keystore

    def reload_tls(self, timeout_s: float = 30) -> BrokerState:
        """Make the running broker re-read its trust bundle and its own key and certificate, with no
        restart: after ``certs rotate-ca`` (trust the new CA beside the old), after re-issuing the
        broker's certificate from it, and after ``certs retire-ca`` (stop trusting the old one).

        Both listeners' ``ssl.*.location`` are set again as dynamic broker configs (AlterConfigs);
        Kafka reloads a store whose file changed even when its path did not. Connections already open
        keep their session; new handshakes use the new stores. Raises BrokerError when no TLS broker runs.
        """
        state = self.status()
        if state is None or state.security_protocol != "SSL" or state.tls_root is None:
            raise BrokerError(f"no TLS broker runs in {self.root}")
        pki = Pki(state.tls_root)
        keystore = self._write_keystore(pki.files(Identity.broker()))
        configs = {
            f"listener.name.{listener}.ssl.{store}.location": str(path)
            for listener in ("ssl", "controller")
            for store, path in (("truststore", pki.ca_file), ("keystore", keystore))
        }
        asyncio.run(asyncio.wait_for(_alter_with_retries(state.kafka(), configs), timeout_s))
        log.info("broker %s re-read its trust bundle and key store", state.bootstrap)
        return state

    def _jvm_options(self) -> list[str]:
        return [
            f"-Xmx{self.settings.heap_mb}m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={self.log_dir}",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG_PATH}",
        ]

    def _format_storage(self, java: str, classpath: str) -> None:
        if (self.data_dir / "meta.properties").exists():
            return
        cluster_id = new_cluster_id()
        command = [
            java,
            *self._jvm_options(),
            "-cp",
            classpath,
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(self.config_file),
        ]
        try:
            done = subprocess.run(
                command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120, check=False
            )
        except subprocess.TimeoutExpired as err:
            raise BrokerError(f"formatting the KRaft storage in {self.data_dir} timed out") from err
        if done.returncode != 0:
            raise BrokerError(
                f"formatting the KRaft storage in {self.data_dir} failed (exit {done.returncode}):\n"
                f"{_tail(done.stdout)}"
            )
        log.info("formatted KRaft storage in %s (cluster id %s)", self.data_dir, cluster_id)

    def _start_once(self, java: str, libs_dir: Path, deadline: float) -> BrokerState:
        port, controller_port = pick_ports(self.settings)
        tls_root: Path | None = None
        if self.settings.security == "tls":
            client = Listener("SSL", port, "SSL")
            controller = Listener("CONTROLLER", controller_port, "SSL")
            tls_root = self.settings.home.expanduser().resolve() / "tls"
            extra = {**self._tls_config(Pki(tls_root)), **self.settings.extra_config}
        else:
            client = Listener("PLAINTEXT", port)
            controller = Listener("CONTROLLER", controller_port)
            extra = dict(self.settings.extra_config)
        config = broker_config(
            client_listeners=[client], controller=controller, data_dir=self.data_dir, extra=extra
        )
        self.config_file.write_text(render_properties(config))
        classpath = str(libs_dir / "*")
        self._format_storage(java, classpath)

        server_log = self.log_dir / "server.log"
        log_offset = server_log.stat().st_size if server_log.exists() else 0
        command = [java, *self._jvm_options(), "-cp", classpath, "kafka.Kafka", str(self.config_file)]
        with (self.log_dir / "broker.out").open("wb") as out:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                start_new_session=True,
            )
        self._proc = proc
        state = BrokerState(
            bootstrap=client.address,
            controller=controller.address,
            pid=proc.pid,
            log_dir=self.log_dir,
            data_dir=self.data_dir,
            started_at=time.time(),
            security_protocol=client.security_protocol,
            tls_root=tls_root,
        )
        self._write_state(state)
        log.info("spawned Kafka broker pid %d for %s", proc.pid, state.bootstrap)
        try:
            self._await_ready(state, deadline, proc, log_offset)
        except BaseException:
            self._terminate(proc.pid, timeout_s=10)
            self.state_file.unlink(missing_ok=True)
            raise
        return state

    def _await_ready(
        self,
        state: BrokerState,
        deadline: float,
        proc: subprocess.Popen[bytes] | None,
        log_offset: int = 0,
    ) -> None:
        def is_alive() -> bool:
            return proc.poll() is None if proc is not None else _pid_alive(state.pid)

        try:
            _wait_ready(state.kafka(), self.cluster_id(), deadline, is_alive)
        except _BrokerExited as err:
            tail = self._failure_tail(log_offset)
            if proc is not None and "Address already in use" in tail:
                taken = _BIND_FAILED_RE.search(tail)
                raise _PortTaken(
                    f"the broker could not bind its ports:\n{tail}", int(taken[1]) if taken else None
                ) from err
            code = f"exit {proc.returncode}" if proc is not None else "gone"
            raise BrokerError(
                f"the Kafka broker (pid {state.pid}) stopped during start ({code}):\n{tail}"
            ) from err
        except TimeoutError as err:
            raise BrokerError(
                f"the Kafka broker (pid {state.pid}) did not answer at {state.bootstrap} in time; "
                f"see {self.log_dir}:\n{self._failure_tail(log_offset)}"
            ) from err

    def _failure_tail(self, log_offset: int) -> str:
        """What this start wrote: ``broker.out``, the errors in ``server.log`` (no stack frames), its end."""
        parts: list[str] = []
        out = _tail(_read_from(self.log_dir / "broker.out"))
        if out:
            parts.append(f"--- {self.log_dir / 'broker.out'}\n{out}")
        server = _ANSI_RE.sub("", _read_from(self.log_dir / "server.log", log_offset))
        errors = _log_errors(server)
        if errors:
            parts.append(f"--- errors in {self.log_dir / 'server.log'}\n" + "\n".join(errors))
        if server.strip():
            parts.append(f"--- end of {self.log_dir / 'server.log'}\n{_tail(server, 10)}")
        return "\n".join(parts) or "(the broker wrote no output)"

    # -- stop ---------------------------------------------------------------------------------------

    def stop(self, timeout_s: float = 30) -> bool:
        """Stop the broker: SIGTERM, then SIGKILL after ``timeout_s``. False when none was running."""
        with self._locked():
            state = self._read_state()
            if state is None:
                return False
            running = self._is_ours(state.pid)
            if running:
                self._terminate(state.pid, timeout_s)
            else:
                log.info("broker pid %d was already gone; removing its state", state.pid)
            self.state_file.unlink(missing_ok=True)
            return running

    def _terminate(self, pid: int, timeout_s: float) -> None:
        log.info("stopping Kafka broker pid %d", pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if self._wait_exit(pid, timeout_s):
            return
        log.warning("broker pid %d ignored SIGTERM for %.0f s; killing it", pid, timeout_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)  # its own session: the process group id is its pid
        if not self._wait_exit(pid, 10.0):
            raise BrokerError(f"the Kafka broker (pid {pid}) survived SIGKILL")

    def _wait_exit(self, pid: int, timeout_s: float) -> bool:
        proc = self._proc
        if proc is not None and proc.pid == pid:
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                return False
            self._proc = None
            return True
        deadline = time.monotonic() + timeout_s
        while _pid_alive(pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True


class _PortTaken(Exception):
    def __init__(self, message: str, port: int | None) -> None:
        super().__init__(message)
        self.port = port


@contextlib.contextmanager
def running_broker(settings: BrokerSettings, timeout_s: float = 90) -> Iterator[BrokerState]:
    """Start the broker (or reuse the one running in that home) and always stop it on exit."""
    broker = LocalBroker(settings)
    try:
        yield broker.start(timeout_s=timeout_s)
    finally:
        broker.stop()


__all__ = [
    "BrokerSettings",
    "BrokerState",
    "Listener",
    "LocalBroker",
    "broker_config",
    "check_java",
    "find_executable",
    "free_port",
    "new_cluster_id",
    "parse_java_major",
    "pick_ports",
    "ping",
    "render_properties",
    "running_broker",
]


def local_bootstrap(settings: BrokerSettings | None = None) -> str | None:
    """The bootstrap address of the local broker started by ``edgestream broker start``, if it runs."""
    state = LocalBroker(settings or BrokerSettings()).status()
    return state.bootstrap if state is not None else None


def local_kafka(
    identity: Identity | None = None, settings: BrokerSettings | None = None
) -> KafkaSettings | None:
    """Client settings for the local broker as ``identity`` (default ``admin``), if it runs."""
    state = LocalBroker(settings or BrokerSettings()).status()
    return state.kafka(identity) if state is not None else None
