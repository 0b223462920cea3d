"""The broker process: ``LocalBroker`` starts, stops and inspects the JVM of one home's broker, or of one
node of its local cluster (``cluster.LocalCluster`` runs three of them).

``start`` formats the KRaft storage on first use, renders ``server.properties``, spawns the JVM in its own
session and returns only once the broker answers a metadata request; ``stop`` sends SIGTERM, then SIGKILL
to its process group. The state file lets any process find the running broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgestream.pipeline.errors import BrokerError
from edgestream.pipeline.security.identities import Identity
from edgestream.pipeline.security.pki import Pki
from edgestream.workers.local.broker.config import (
    NODE_ID,
    Listener,
    broker_config,
    new_cluster_id,
    pick_ports,
    render_properties,
)
from edgestream.workers.local.broker.jars import JarCache
from edgestream.workers.local.broker.java import check_java, jvm_options
from edgestream.workers.local.broker.output import log_errors, read_from, strip_colours, tail
from edgestream.workers.local.broker.plan import ClusterPlan, NodePorts
from edgestream.workers.local.broker.posix import file_lock, pid_alive
from edgestream.workers.local.broker.probe import BrokerExited, wait_ready
from edgestream.workers.local.broker.reload import NodeReload, apply_stores, roll
from edgestream.workers.local.broker.settings import BrokerSettings
from edgestream.workers.local.broker.state import BrokerState, read_state, write_state
from edgestream.workers.local.broker.tls import (
    next_reload_stores,
    refresh_reload_stores,
    tls_config,
    write_keystore,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from edgestream.pipeline.settings import KafkaSettings

log = logging.getLogger(__name__)

_PORT_RETRIES = 3
_BIND_FAILED_RE = re.compile(r"failed to bind to \S+:(\d+)")


class _PortTaken(Exception):
    def __init__(self, message: str, port: int | None) -> None:
        super().__init__(message)
        self.port = port


@dataclass(frozen=True, slots=True)
class ClusterMember:
    """Which node of a local cluster a ``LocalBroker`` runs, and where its state lives."""

    plan: ClusterPlan
    """The cluster: its id and every node's ports (the quorum)."""
    node: NodePorts
    """This node."""
    root: Path
    """This node's directory (data, logs, config, state file)."""


class LocalBroker:
    """Start, stop and inspect the local single-node broker kept in ``<home>/broker/``, or, with
    ``member``, one node of the home's local cluster (on the plan's fixed ports)."""

    def __init__(self, settings: BrokerSettings, member: ClusterMember | None = None) -> None:
        self.settings = settings
        self.member = member
        """The cluster node this is; None for the single broker."""
        self.root = settings.home.expanduser().resolve() / "broker" if member is None else member.root
        """All of the broker's local state."""
        self.data_dir = self.root / "data"
        self.log_dir = self.root / "logs"
        self.config_file = self.root / "server.properties"
        self.state_file = self.root / "state.json"
        self.jars = JarCache(settings)
        """The jars this broker runs from, resolved on first start."""
        self._proc: subprocess.Popen[bytes] | None = None

    # -- state --------------------------------------------------------------------------------------

    def _is_ours(self, pid: int) -> bool:
        """True when ``pid`` is alive and is the JVM running this home's broker (not a reused pid)."""
        self._reap()
        if not pid_alive(pid):
            return False
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            return False
        except OSError:
            return True  # no procfs to tell: trust the pid
        return b"kafka.Kafka" in cmdline and os.fsencode(self.config_file) in cmdline

    def _reap(self) -> None:
        """Forget (and reap) the JVM this object started once it has exited, e.g. stopped by another
        process: no zombie is left behind."""
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with file_lock(self.root / "lock"):
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
        self._reap()
        state = read_state(self.state_file)
        if state is None or not self._is_ours(state.pid):
            return None
        return state

    # -- start --------------------------------------------------------------------------------------

    def start(self, timeout_s: float = 90) -> BrokerState:
        """Start the broker, or return the running one; returns once it answers a metadata request.

        Resolves the jars first when they are not cached (not counted in ``timeout_s``). Idempotent.
        """
        with self._locked():
            existing = read_state(self.state_file)
            if existing is not None:
                if self._is_ours(existing.pid):
                    self._await_ready(existing, time.monotonic() + timeout_s, None)
                    log.info("broker already running at %s (pid %d)", existing.bootstrap, existing.pid)
                    return existing
                log.info("removing stale broker state (pid %d is gone)", existing.pid)
                self.state_file.unlink(missing_ok=True)
            java = check_java()
            libs_dir = self.jars.fetch(quiet=True)
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.log_dir.mkdir(parents=True, exist_ok=True)
            deadline = time.monotonic() + timeout_s
            for attempt in range(1, _PORT_RETRIES + 1):
                try:
                    return self._start_once(java, libs_dir, deadline)
                except _PortTaken as err:
                    fixed = {self.settings.port, self.settings.controller_port} - {0}
                    if self.member is not None:
                        fixed = {self.member.node.port, self.member.node.controller_port}
                    if attempt == _PORT_RETRIES or err.port is None or err.port in fixed:
                        raise BrokerError(str(err)) from err
                    log.info("port %d was taken after we chose it; retrying with new ports", err.port)
            raise AssertionError("unreachable")

    def _tls_config(self, pki: Pki) -> dict[str, str]:
        """The TLS settings of this broker; issues its certificates if needed. The key store is one PEM
        file next to the config, the trust store the PKI's bundle; ``reload_tls`` re-reads both."""
        issued = pki.ensure([Identity.broker(), Identity.admin()])
        own = issued[Identity.broker()]
        refresh_reload_stores(self.root, own)
        return tls_config(write_keystore(self.root, own), own.ca_file, jit=self.settings.jit)

    def reload_tls(self, timeout_s: float = 60) -> BrokerState:
        """Make the running broker re-read its trust bundle and its own key and certificate, with no
        restart: after ``certs rotate-ca`` (trust the new CA beside the old), after re-issuing the
        broker's certificate from it, and after ``certs retire-ca`` (stop trusting the old one).

        Both listeners' ``ssl.*.location`` are set, as dynamic broker configs (AlterConfigs), to a new
        generation of the stores (``tls.next_reload_stores``: new paths, so Kafka rebuilds every SSL
        engine); it returns once the broker describes them as current, and older generations are
        removed then. The same one step as each node of a cluster's rolling reload (``reload.roll``).
        Connections already open keep their session; new handshakes use the new stores. Raises
        BrokerError when no TLS broker runs, or it did not take the new stores, and for a cluster node
        (``cluster.LocalCluster.reload_tls`` rolls over them all).
        """
        if self.member is not None:  # the configs would name broker NODE_ID, not this node
            raise BrokerError("a cluster reloads its nodes together, one at a time: LocalCluster.reload_tls")
        state = self.status()
        if state is None or state.security_protocol != "SSL" or state.tls_root is None:
            raise BrokerError(f"no TLS broker runs in {self.root}")
        step = NodeReload(NODE_ID, state.bootstrap, self.root, *next_reload_stores(self.root))
        own = Pki(state.tls_root).files(Identity.broker())
        report = asyncio.run(roll([step], own, functools.partial(apply_stores, state.kafka()), timeout_s))
        if not report.ok:
            raise BrokerError(report.failed[NODE_ID])
        log.info("broker %s re-read its trust bundle and key store", state.bootstrap)
        return state

    def _jvm_options(self) -> list[str]:
        heap_mb = self.settings.heap_mb if self.member is None else self.settings.node_heap_mb
        return jvm_options(heap_mb, self.log_dir, self.settings.jit)

    def _format_storage(self, java: str, classpath: str) -> None:
        if (self.data_dir / "meta.properties").exists():
            return
        cluster_id = new_cluster_id() if self.member is None else self.member.plan.cluster_id
        command = [java, *self._jvm_options(), "-cp", classpath, "kafka.tools.StorageTool", "format"]
        command += ["-t", cluster_id, "-c", str(self.config_file)]
        try:
            done = subprocess.run(
                command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120, check=False
            )
        except subprocess.TimeoutExpired as err:
            raise BrokerError(f"formatting the KRaft storage in {self.data_dir} timed out") from err
        if done.returncode != 0:
            raise BrokerError(
                f"formatting the KRaft storage in {self.data_dir} failed (exit {done.returncode}):\n"
                f"{tail(done.stdout)}"
            )
        log.info("formatted KRaft storage in %s (cluster id %s)", self.data_dir, cluster_id)

    def _write_config(self) -> tuple[Listener, Listener, Path | None]:
        """Render ``server.properties`` on fresh ports (a cluster node: on its plan's ports); the client
        and controller listeners and, for a TLS broker, the PKI directory it trusts."""
        if self.member is None:
            port, controller_port = pick_ports(self.settings)
            node_id, voters = NODE_ID, None
        else:
            port, controller_port = self.member.node.port, self.member.node.controller_port
            node_id, voters = self.member.node.node_id, self.member.plan.voters()
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
            client_listeners=[client],
            controller=controller,
            data_dir=self.data_dir,
            extra=extra,
            node_id=node_id,
            voters=voters,
        )
        self.config_file.write_text(render_properties(config))
        return client, controller, tls_root

    def _start_once(self, java: str, libs_dir: Path, deadline: float) -> BrokerState:
        client, controller, tls_root = self._write_config()
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
        write_state(self.state_file, state)
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
            return proc.poll() is None if proc is not None else pid_alive(state.pid)

        try:
            wait_ready(state.kafka(), self.cluster_id(), deadline, is_alive)
        except BrokerExited as err:
            failure = self._failure_tail(log_offset)
            if proc is not None and "Address already in use" in failure:
                taken = _BIND_FAILED_RE.search(failure)
                raise _PortTaken(
                    f"the broker could not bind its ports:\n{failure}", int(taken[1]) if taken else None
                ) from err
            code = f"exit {proc.returncode}" if proc is not None else "gone"
            raise BrokerError(
                f"the Kafka broker (pid {state.pid}) stopped during start ({code}):\n{failure}"
            ) from err
        except TimeoutError as err:
            raise BrokerError(
                f"the Kafka broker (pid {state.pid}) did not answer at {state.bootstrap} in time; "
                f"see {self.log_dir}:\n{self._failure_tail(log_offset)}"
            ) from err

    def _failure_tail(self, log_offset: int) -> str:
        """What this start wrote: ``broker.out``, the errors in ``server.log`` (no stack frames), its end."""
        parts: list[str] = []
        out = tail(read_from(self.log_dir / "broker.out"))
        if out:
            parts.append(f"--- {self.log_dir / 'broker.out'}\n{out}")
        server = strip_colours(read_from(self.log_dir / "server.log", log_offset))
        errors = log_errors(server)
        if errors:
            parts.append(f"--- errors in {self.log_dir / 'server.log'}\n" + "\n".join(errors))
        if server.strip():
            parts.append(f"--- end of {self.log_dir / 'server.log'}\n{tail(server, 10)}")
        return "\n".join(parts) or "(the broker wrote no output)"

    # -- stop ---------------------------------------------------------------------------------------

    def stop(self, timeout_s: float = 30) -> bool:
        """Stop the broker: SIGTERM, then SIGKILL after ``timeout_s``. False when none was running."""
        with self._locked():
            state = read_state(self.state_file)
            if state is None:
                return False
            running = self._is_ours(state.pid)
            if running:
                self._terminate(state.pid, timeout_s)
            else:
                log.info("broker pid %d was already gone; removing its state", state.pid)
            self.state_file.unlink(missing_ok=True)
            return running

    def kill(self) -> bool:
        """SIGKILL the broker's process group at once, as a crash would (fault scenarios), and remove its
        state; its data stays. False when none was running."""
        with self._locked():
            state = read_state(self.state_file)
            if state is None or not self._is_ours(state.pid):
                return False
            log.info("killing Kafka broker pid %d (SIGKILL)", state.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(state.pid, signal.SIGKILL)
            if not self._wait_exit(state.pid, 10.0):
                raise BrokerError(f"the Kafka broker (pid {state.pid}) survived SIGKILL")
            self.state_file.unlink(missing_ok=True)
            return True

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
        while pid_alive(pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True


@contextlib.contextmanager
def running_broker(settings: BrokerSettings, timeout_s: float = 90) -> Iterator[BrokerState]:
    """Start the broker (or reuse the one running in that home) and always stop it on exit."""
    broker = LocalBroker(settings)
    try:
        yield broker.start(timeout_s=timeout_s)
    finally:
        broker.stop()


def local_bootstrap(settings: BrokerSettings | None = None) -> str | None:
    """The bootstrap address of the local broker started by ``edgestream broker start`` (every node's,
    for a local cluster), if it runs."""
    from edgestream.workers.local.broker.cluster import LocalCluster  # it builds on this module

    chosen = settings or BrokerSettings()
    cluster = LocalCluster(chosen).status()
    if cluster is not None:
        return cluster.bootstrap
    state = LocalBroker(chosen).status()
    return state.bootstrap if state is not None else None


def local_kafka(
    identity: Identity | None = None, settings: BrokerSettings | None = None
) -> KafkaSettings | None:
    """Client settings for the local broker (or the home's local cluster) as ``identity`` (default
    ``admin``), if it runs."""
    from edgestream.workers.local.broker.cluster import LocalCluster  # it builds on this module

    chosen = settings or BrokerSettings()
    cluster = LocalCluster(chosen).status()
    if cluster is not None:
        return cluster.kafka(identity)
    state = LocalBroker(chosen).status()
    return state.kafka(identity) if state is not None else None
