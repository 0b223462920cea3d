"""One gateway bench run: a broker, a gateway process, a device process, three phases, one JSON.

The gateway runs as it does in production (its own process, TLS 1.3 to devices, mTLS to the broker as
``gateway-<region>``); the devices run in another process (``devices.py``), so the gateway's CPU time
and RSS (from ``/proc``) are its own. Phases: connect every session (RSS before and after: memory per
session), every device sends one envelope (gateway CPU per envelope produced and accepted), one
synthetic sealed reply per device is produced to the replies topic keyed by its device id (gateway CPU
per reply routed; each device checks it got exactly its own), and one device drops its connection
many times while replies for it arrive (lost and duplicated replies at the deduping device).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import IO, Any, Final

from bench.gateway.devices import device_ids, device_key, reply_id
from edgestream.pipeline import kafka
from edgestream.pipeline.contract.gatewayauth import auth_public_key, write_directory
from edgestream.pipeline.contract.records import ResultRecord
from edgestream.pipeline.contract.reply import ReplyHeader, ReplyKey, seal_reply
from edgestream.pipeline.security.identities import Identity
from edgestream.pipeline.security.pki import Pki
from edgestream.pipeline.settings import KafkaSettings
from edgestream.topics.acl_admin import apply_policy
from edgestream.topics.admin import ensure_topics
from edgestream.topics.catalogue import all_topics, replies_topic
from edgestream.workers.local.broker.process import running_broker
from edgestream.workers.local.broker.settings import BrokerSettings
from edgestream.workers.local.broker.state import BrokerState

REGION: Final = "gwbench"
"""The bench's region."""
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Child:
    """A bench process speaking JSON lines."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.gateway", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def ask(self, line: str | None = None) -> dict[str, Any]:
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None
        assert stdout is not None
        if line is not None:
            stdin.write(line + "\n")
            stdin.flush()
        answer = stdout.readline()
        if not answer:
            raise RuntimeError(f"bench process {self.proc.args!r} ended (status {self.proc.poll()})")
        result: dict[str, Any] = json.loads(answer)
        return result

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def produce_replies(
    admin: KafkaSettings, replies: list[tuple[str, bytes, bytes]], pace_s: float = 0.0
) -> None:
    """Produce sealed replies ``(device id, request id, device key)`` keyed by device id."""
    topic = replies_topic(REGION)
    keys: dict[bytes, ReplyKey] = {}
    async with kafka.started(kafka.producer(admin, "bench-gateway-replies", linger_ms=5)) as producer:
        for device_id, rid, key in replies:
            reply_key = keys.get(key) or keys.setdefault(key, ReplyKey(key))
            record = ResultRecord(
                rid, device_id, "embedding-scorer", 1, 0, (1.0,), 0.0, 0.0, 0.0, 1, "gwbench", REGION, 0
            )
            header = ReplyHeader(rid, 1, "embedding-scorer", 1)
            sealed = seal_reply(record.to_bytes(), reply_key, header, REGION)
            await producer.send(topic, sealed, key=device_id.encode())
            if pace_s:
                await asyncio.sleep(pace_s)
        await producer.flush()


def _gateway_files(state: BrokerState, home: Path, sessions: int, linger_ms: int) -> tuple[Path, str]:
    """The gateway's settings file (its certificates, the directory of the bench's devices) and the CA
    file devices trust."""
    gateway_kafka = state.kafka(Identity.gateway(REGION))
    pki = Pki(state.tls_root) if state.tls_root is not None else Pki.in_home(home)
    wss = pki.ensure([Identity.gateway(REGION, "wss")])[Identity.gateway(REGION, "wss")]
    ids = device_ids(REGION, sessions)
    directory = home / "directory.json"
    write_directory(directory, REGION, {d: {1: auth_public_key(device_key(d))} for d in ids})
    settings = {
        "region": REGION,
        "home": str(home),
        "port": 0,
        "node_id": "gwbench",
        "kafka": json.loads(gateway_kafka.model_dump_json()),
        "server_cert_file": str(wss.cert_file),
        "server_key_file": str(wss.key_file),
        "directory_file": str(directory),
        "max_sessions": sessions + 100,
        "health_port": 0,
        "linger_ms": linger_ms,
    }
    settings_file = home / "gateway.json"
    settings_file.write_text(json.dumps(settings))
    return settings_file, str(wss.ca_file)


REPLY_PACE_S: Final = 0.02
"""Replies to the reconnecting device come at 50 a second: the most its requests may bring (the
edge's and the gateway's per-device rate)."""
IDLE_S: Final = 5.0
"""How long the connected gateway's background CPU (keepalive pings) is measured for."""


class Meter:
    """The gateway process's CPU and wall time between marks, less its idle rate."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.idle_rate = 0.0
        """CPU seconds per second the gateway spends with every session connected and quiet."""
        self._cpu, self._wall = cpu_s(pid), time.monotonic()

    def mark(self) -> tuple[float, float]:
        """(CPU s, wall s) since the last mark; the idle rate's share of the CPU is taken out."""
        cpu, wall = cpu_s(self.pid), time.monotonic()
        used, took = cpu - self._cpu, wall - self._wall
        self._cpu, self._wall = cpu, wall
        return max(0.0, used - self.idle_rate * took), took


def measure(
    sessions: int,
    disconnects: int,
    reconnect_replies: int,
    pace_s: float = REPLY_PACE_S,
    linger_ms: int = 0,
    *,
    gc_freeze: bool = False,
) -> dict[str, Any]:
    """The whole run; the result document."""
    home = Path(tempfile.mkdtemp(prefix="gwbench-"))
    with running_broker(BrokerSettings(home=home / "broker")) as state:
        admin = state.kafka()
        asyncio.run(ensure_topics(admin, all_topics([REGION])))
        if state.security_protocol == "SSL":
            asyncio.run(apply_policy(admin, [REGION]))
        settings_file, ca_file = _gateway_files(state, home, sessions, linger_ms)
        env = {**os.environ, "PYTHONPATH": os.getcwd()}
        gateway = Child(["serve", str(settings_file)], env)
        devices: Child | None = None
        try:
            started = gateway.ask()  # answers once serving (its /readyz is already true by then)
            time.sleep(1.0)  # not readiness: lets start-up allocations settle before the idle RSS baseline
            url = f"wss://localhost:{started['port']}/v1"
            devices = Child(["devices", url, ca_file, REGION, str(sessions)], env)
            counts = (sessions, disconnects, reconnect_replies)
            result = _phases(gateway.proc.pid, devices, admin, counts, pace_s, gc_freeze)
            result["gateway_metrics"] = _replies_metrics(started["health_port"])
            result["gateway_linger_ms"] = linger_ms
            result["gc_frozen_after_connect"] = gc_freeze
        finally:
            if devices is not None:
                _quit(devices)
            gateway.stop()
    return result


def _phases(
    pid: int,
    devices: Child,
    admin: KafkaSettings,
    counts: tuple[int, int, int],
    pace_s: float,
    gc_freeze: bool,
) -> dict[str, Any]:
    sessions, disconnects, reconnect_replies = counts
    ids = device_ids(REGION, sessions)
    rss_idle = rss_bytes(pid)
    meter = Meter(pid)
    connect = devices.ask("connect")
    connect_cpu, _ = meter.mark()
    if gc_freeze:  # what the cyclic collector costs the gateway: its long-lived sessions frozen out
        os.kill(pid, signal.SIGUSR1)
    time.sleep(1.0)  # not readiness (every session answered `connect`): lets RSS settle before reading it
    rss_connected = rss_bytes(pid)
    meter.mark()
    time.sleep(IDLE_S)
    idle_cpu, idle_wall = meter.mark()
    meter.idle_rate = idle_cpu / idle_wall
    send = devices.ask("send 1")
    send_cpu, _ = meter.mark()
    asyncio.run(produce_replies(admin, [(d, reply_id(d, 0), device_key(d)) for d in ids]))
    routed = devices.ask("replies 1")
    reply_cpu, _ = meter.mark()
    rc_device, rc_key = ids[0], device_key(ids[0])
    rc = [(rc_device, reply_id(f"rc/{rc_device}", n), rc_key) for n in range(reconnect_replies)]
    stdin = devices.proc.stdin
    assert stdin is not None
    stdin.write(f"reconnect {disconnects} {reconnect_replies}\n")
    stdin.flush()
    asyncio.run(produce_replies(admin, rc, pace_s=pace_s))
    reconnect = devices.ask()
    connected = int(connect["connected"])
    return {
        "sessions": {
            "target": sessions,
            "connected": connected,
            "failed": connect["failed"],
            "connect_seconds": round(connect["seconds"], 1),
            "ulimit_nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        },
        "memory": {
            "gateway_rss_idle_mib": round(rss_idle / 2**20, 1),
            "gateway_rss_connected_mib": round(rss_connected / 2**20, 1),
            "gateway_rss_end_mib": round(rss_bytes(pid) / 2**20, 1),
            "bytes_per_session": round((rss_connected - rss_idle) / max(1, connected)),
        },
        "cpu": {
            "connect_ms_per_session": round(1000 * connect_cpu / max(1, connected), 3),
            "idle_share_of_a_core": round(meter.idle_rate, 4),
            "envelope_ms": round(1000 * send_cpu / max(1, send["accepted"]), 3),
            "reply_ms": round(1000 * reply_cpu / max(1, routed["received"]), 3),
            "note": "per operation, less the idle rate (keepalive pings of every session) over the phase",
        },
        "envelopes": send,
        "replies": routed,
        "reconnect": {**reconnect, "reply_pace_s": pace_s},
    }


def _replies_metrics(port: int | None) -> dict[str, float]:
    """The gateway's reply and refusal counters, from its /metrics."""
    if port is None:
        return {}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("edgestream_gateway_replies_total", "edgestream_gateway_envelopes_total")):
            name, value = line.rsplit(" ", 1)
            if float(value):
                out[name] = float(value)
    return out


def _quit(devices: Child) -> None:
    stdin: IO[str] | None = devices.proc.stdin
    try:
        if stdin is not None:
            stdin.write("quit\n")
            stdin.flush()
        devices.proc.wait(60)
    except (OSError, subprocess.TimeoutExpired):
        devices.stop()
