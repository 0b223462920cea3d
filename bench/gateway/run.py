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
import subprocess
import sys
import tempfile
import time
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


def _gateway_files(state: BrokerState, home: Path, sessions: int) -> tuple[Path, str]:
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
    }
    settings_file = home / "gateway.json"
    settings_file.write_text(json.dumps(settings))
    return settings_file, str(wss.ca_file)


def measure(sessions: int, disconnects: int, reconnect_replies: int) -> dict[str, Any]:
    """The whole run; the result document."""
    home = Path(tempfile.mkdtemp(prefix="gwbench-"))
    with running_broker(BrokerSettings(home=home / "broker")) as state:
        admin = state.kafka()
        asyncio.run(ensure_topics(admin, all_topics([REGION])))
        if state.security_protocol == "SSL":
            asyncio.run(apply_policy(admin, [REGION]))
        settings_file, ca_file = _gateway_files(state, home, sessions)
        ids = device_ids(REGION, sessions)
        env = {**os.environ, "PYTHONPATH": os.getcwd()}
        gateway = Child(["serve", str(settings_file)], env)
        devices: Child | None = None
        try:
            port = gateway.ask()["port"]
            pid = gateway.proc.pid
            time.sleep(1.0)
            rss_idle, cpu_idle = rss_bytes(pid), cpu_s(pid)
            url = f"wss://localhost:{port}/v1"
            devices = Child(["devices", url, ca_file, REGION, str(sessions)], env)
            connect = devices.ask("connect")
            time.sleep(1.0)
            rss_connected, cpu_connected = rss_bytes(pid), cpu_s(pid)
            send = devices.ask("send 1")
            cpu_sent = cpu_s(pid)
            batch = [(d, reply_id(d, 0), device_key(d)) for d in ids]
            asyncio.run(produce_replies(admin, batch))
            routed = devices.ask("replies 1")
            cpu_routed = cpu_s(pid)
            rc_device = ids[0]
            rc_key = device_key(rc_device)
            rc = [(rc_device, reply_id(f"rc/{rc_device}", n), rc_key) for n in range(reconnect_replies)]
            stdin = devices.proc.stdin
            assert stdin is not None
            stdin.write(f"reconnect {disconnects} {reconnect_replies}\n")
            stdin.flush()
            asyncio.run(produce_replies(admin, rc, pace_s=0.002))
            reconnect = devices.ask()
            rss_end = rss_bytes(pid)
        finally:
            if devices is not None:
                _quit(devices)
            gateway.stop()
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
            "gateway_rss_end_mib": round(rss_end / 2**20, 1),
            "bytes_per_session": round((rss_connected - rss_idle) / max(1, connected)),
        },
        "cpu": {
            "connect_ms_per_session": round(1000 * (cpu_connected - cpu_idle) / max(1, connected), 3),
            "envelope_ms": round(1000 * (cpu_sent - cpu_connected) / max(1, send["accepted"]), 3),
            "reply_ms": round(1000 * (cpu_routed - cpu_sent) / max(1, routed["received"]), 3),
        },
        "envelopes": send,
        "replies": routed,
        "reconnect": reconnect,
    }


def _quit(devices: Child) -> None:
    stdin: IO[str] | None = devices.proc.stdin
    try:
        if stdin is not None:
            stdin.write("quit\n")
            stdin.flush()
        devices.proc.wait(60)
    except (OSError, subprocess.TimeoutExpired):
        devices.stop()
