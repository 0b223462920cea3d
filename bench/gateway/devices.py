"""The bench's device side, a process of its own (``python -m bench.gateway devices``): many sessions on
one gateway, each a `GatewayTransport` with its own key, driven by commands on stdin, answering with
one JSON line each on stdout.

Commands: ``connect`` (open every session), ``send K`` (each device sends K sealed envelopes and waits
for their ``accepted``), ``replies K`` (wait until each device holds its K replies: each must open with
that device's own reply key and carry the request id made for it), ``reconnect D M`` (one device drops
its connection D times while M replies for it arrive; counts what it lost and what came twice),
``quit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from edgestream.device.gateway_client import GatewayTransport
from edgestream.device.transport import (
    Accepted,
    Connected,
    RegionEndpoint,
    Rejected,
    Reply,
    TransportUnavailable,
)
from edgestream.pipeline.contract.codec import encode_tensor
from edgestream.pipeline.contract.envelope import seal
from edgestream.pipeline.contract.reply import ReplyKey, ReplyRefused, open_reply

HANDSHAKES: Final = 64
"""TLS handshakes in flight at once while connecting."""


def device_ids(region: str, count: int) -> list[str]:
    """The bench's device ids."""
    return [f"dev-{region}-{n:05d}" for n in range(count)]


def device_key(device_id: str) -> bytes:
    """A bench device's key (any 32 bytes: the directory holds its public auth key)."""
    return hashlib.sha256(b"bench/" + device_id.encode()).digest()


def reply_id(device_id: str, n: int) -> bytes:
    """The request id of the ``n``-th synthetic reply to ``device_id``."""
    return hashlib.sha256(f"{device_id}/{n}".encode()).digest()[:16]


async def until(predicate: Callable[[], bool], timeout_s: float, step_s: float) -> bool:
    """Poll ``predicate`` (state the pumps change) until it holds or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < deadline:  # noqa: ASYNC110 - other tasks change it
        await asyncio.sleep(step_s)
    return predicate()


@dataclass
class Device:
    """One session and what it received."""

    device_id: str
    transport: GatewayTransport
    reply_key: ReplyKey
    replies: dict[bytes, int] = field(default_factory=dict)
    """Request id -> copies received."""
    foreign: int = 0
    """Replies that did not open with this device's key, or answered a request not made for it."""
    accepted: int = 0
    rejected: int = 0
    redelivered: int = 0
    sessions: int = 0


async def pump(device: Device, region: str) -> None:
    """Drain one device's events: ack and check replies, count the rest."""
    t = device.transport
    while True:
        event = await t.events.get()
        if isinstance(event, Reply):
            try:
                open_reply(event.sealed, device.reply_key, region)
            except ReplyRefused:
                device.foreign += 1
                continue
            device.replies[event.request_id] = device.replies.get(event.request_id, 0) + 1
            if t.connected:
                with contextlib.suppress(TransportUnavailable):  # dropped: the reply comes again
                    await t.ack([event.request_id])
        elif isinstance(event, Accepted):
            device.accepted += 1
        elif isinstance(event, Rejected):
            device.rejected += 1
        elif isinstance(event, Connected):
            device.sessions += 1
            device.redelivered += event.redelivered


class Fleet:
    """Every device of the bench."""

    def __init__(self, endpoint: RegionEndpoint, count: int) -> None:
        self.endpoint = endpoint
        self.devices = [
            Device(
                d,
                GatewayTransport(endpoint, d, device_key(d), 1, backoff_min_s=0.01, backoff_max_s=0.2),
                ReplyKey(device_key(d)),
            )
            for d in device_ids(endpoint.region, count)
        ]
        self._pumps: list[asyncio.Task[None]] = []

    async def connect(self) -> dict[str, Any]:
        gate = asyncio.Semaphore(HANDSHAKES)
        started = time.monotonic()

        async def one(device: Device) -> bool:
            async with gate:
                try:
                    await device.transport.connect(60)
                    return True
                except Exception:  # counted: a failed session is the bench's finding
                    return False

        ok = await asyncio.gather(*(one(d) for d in self.devices))
        self._pumps = [asyncio.create_task(pump(d, self.endpoint.region)) for d in self.devices]
        return {"connected": sum(ok), "failed": len(ok) - sum(ok), "seconds": time.monotonic() - started}

    async def send(self, per_device: int) -> dict[str, Any]:
        body = encode_tensor(np.zeros(16, dtype=np.float32), "float16")
        before = sum(d.accepted + d.rejected for d in self.devices)
        started = time.monotonic()
        for _ in range(per_device):
            for d in self.devices:
                key = device_key(d.device_id)
                envelope = seal(
                    body,
                    device_key=key,
                    device_id=d.device_id,
                    key_id=1,
                    kind="embedding",
                    model="embedding-scorer",
                )
                await d.transport.send("embedding", envelope)
        expected = before + per_device * len(self.devices)
        await until(lambda: sum(d.accepted + d.rejected for d in self.devices) >= expected, 120, 0.05)
        return {
            "accepted": sum(d.accepted for d in self.devices),
            "rejected": sum(d.rejected for d in self.devices),
            "seconds": time.monotonic() - started,
        }

    async def replies(self, per_device: int, timeout_s: float = 120) -> dict[str, Any]:
        started = time.monotonic()
        expected = {d.device_id: {reply_id(d.device_id, n) for n in range(per_device)} for d in self.devices}
        await until(
            lambda: all(set(d.replies) >= expected[d.device_id] for d in self.devices), timeout_s, 0.1
        )
        exact = sum(1 for d in self.devices if set(d.replies) == expected[d.device_id])
        return {
            "devices_exact": exact,
            "devices": len(self.devices),
            "received": sum(sum(d.replies.values()) for d in self.devices),
            "foreign": sum(d.foreign for d in self.devices),
            "seconds": time.monotonic() - started,
        }

    async def reconnect(self, drops: int, expect: int, device_index: int = 0) -> dict[str, Any]:
        device = self.devices[device_index]
        t = device.transport
        before = dict(device.replies)
        made = 0
        for _ in range(drops):
            await t.drop()
            made += 1
            await until(lambda: t.connected, 30, 0.002)
            await asyncio.sleep(0.004)
        wanted = {reply_id(f"rc/{device.device_id}", n) for n in range(expect)}
        await until(lambda: wanted <= set(device.replies), 120, 0.05)
        got = {rid: c - before.get(rid, 0) for rid, c in device.replies.items() if rid in wanted}
        return {
            "disconnects": made,
            "replies": expect,
            "lost": len(wanted - set(got)),
            "copies_dropped_by_dedupe": sum(c - 1 for c in got.values() if c > 1),
            "duplicated_after_dedupe": 0,
            "sessions": device.sessions,
            "redelivered": device.redelivered,
            "foreign": device.foreign,
        }

    async def close(self) -> None:
        for task in self._pumps:
            task.cancel()
        await asyncio.gather(*(d.transport.close() for d in self.devices), return_exceptions=True)


async def serve_commands(endpoint: RegionEndpoint, count: int) -> None:
    """Read commands from stdin until ``quit``; one JSON line out per command."""
    fleet = Fleet(endpoint, count)
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if not line or line[0] == "quit":
            break
        command, args = line[0], [int(a) for a in line[1:]]
        if command == "connect":
            out = await fleet.connect()
        elif command == "send":
            out = await fleet.send(args[0])
        elif command == "replies":
            out = await fleet.replies(args[0])
        elif command == "reconnect":
            out = await fleet.reconnect(args[0], args[1])
        else:
            out = {"error": f"unknown command {command}"}
        print(json.dumps(out), flush=True)
    await fleet.close()
