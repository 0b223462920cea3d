"""An in-memory `Transport` and a pretend gateway+edge behind it, for the SDK's logic tests.

The edge part is real contract code: it decodes and opens each envelope with the device's key
(``decode_envelope``/``open_envelope``), answers with a result record sealed to the device
(``seal_reply``), after ``delay_s``; knobs make it slow, silent, duplicating, tampering or down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgestream.device.transport import (
    Accepted,
    ClockSample,
    Connected,
    Disconnected,
    Event,
    RegionEndpoint,
    Rejected,
    Reply,
    TransportUnavailable,
)
from edgestream.pipeline.contract.codec import decode_tensor
from edgestream.pipeline.contract.envelope import decode_envelope, open_envelope
from edgestream.pipeline.contract.records import ResultRecord
from edgestream.pipeline.contract.reply import ReplyHeader, ReplyKey, seal_reply


@dataclass
class MemoryGateway:
    """One region's gateway and edge, in memory."""

    region: str
    device_key: bytes
    catalogue: bytes
    artifacts: dict[str, bytes]
    label_of: Callable[[np.ndarray[Any, Any]], int] = lambda x: 1
    version: int = 1
    delay_s: float = 0.0
    accept: bool = True
    answer: bool = True
    copies: int = 1
    tamper: bool = False
    down: bool = False
    reject: str | None = None
    other_device_key: bytes | None = None
    offset_ms: float = 0.0
    sent: list[tuple[str, bytes, int]] = field(default_factory=list)
    acked: list[bytes] = field(default_factory=list)
    reports: list[bytes] = field(default_factory=list)

    def endpoint(self, lat: float, lon: float) -> RegionEndpoint:
        return RegionEndpoint(self.region, f"wss://{self.region}.invalid/v1", lat, lon, "ca.pem")

    def reply_for(self, envelope: bytes) -> bytes:
        env = decode_envelope(envelope, max_envelope_bytes=1 << 20)
        body = open_envelope(env, self.device_key, max_body_bytes=1 << 20)
        x = decode_tensor(body)
        label = self.label_of(x)
        scores = tuple(0.9 if i == label else 0.1 for i in range(2))
        version = env.model_version or self.version
        record = ResultRecord(
            env.request_id,
            env.device_id,
            env.model,
            version,
            label,
            scores,
            0.1,
            0.1,
            1.0,
            1,
            "n",
            self.region,
            1,
        )
        header = ReplyHeader(env.request_id, env.key_id, env.model, version)
        sealer = ReplyKey(self.other_device_key or self.device_key)
        sealed = seal_reply(record.to_bytes(), sealer, header, self.region)
        if self.tamper:
            sealed = sealed[:-1] + bytes([sealed[-1] ^ 1])
        return sealed


class MemoryTransport:
    """The `Transport` protocol over a `MemoryGateway`."""

    def __init__(self, gateway: MemoryGateway) -> None:
        self.gateway = gateway
        self._connected = False
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self.connects = 0

    @property
    def region(self) -> str:
        return self.gateway.region

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def events(self) -> asyncio.Queue[Event]:
        return self._events

    async def connect(self, timeout_s: float) -> None:
        del timeout_s
        self.connects += 1
        if self.gateway.down:
            raise TransportUnavailable(self.region, "unreachable")
        self._connected = True
        self._events.put_nowait(Connected(self.region, b"s" * 16, 0))

    async def close(self) -> None:
        self._connected = False

    def drop(self) -> None:
        """The network goes: the session drops (and stays down while the gateway is down)."""
        self.gateway.down = True
        self._connected = False
        self._events.put_nowait(Disconnected(self.region, "network"))

    def restore(self) -> None:
        """The network comes back and the transport reconnects on its own."""
        self.gateway.down = False
        self._connected = True
        self._events.put_nowait(Connected(self.region, b"s" * 16, 0))

    def _check(self) -> None:
        if not self._connected:
            raise TransportUnavailable(self.region, "closed")

    async def send(self, kind: str, envelope: bytes, *, fallbacks: int = 0) -> None:
        self._check()
        g = self.gateway
        g.sent.append((kind, envelope, fallbacks))
        rid = decode_envelope(envelope, max_envelope_bytes=1 << 20).request_id
        if g.reject is not None:
            self._events.put_nowait(Rejected(rid, g.reject, "test"))
            return
        if g.accept:
            self._events.put_nowait(Accepted(rid))
        if g.answer:
            sealed = g.reply_for(envelope)
            loop = asyncio.get_running_loop()
            for _ in range(g.copies):
                loop.call_later(g.delay_s, self._events.put_nowait, Reply(rid, sealed))

    async def ack(self, request_ids: list[bytes]) -> None:
        self._check()
        self.gateway.acked.extend(request_ids)

    async def report(self, body: bytes) -> None:
        self._check()
        self.gateway.reports.append(body)

    async def sync_clock(self) -> ClockSample:
        self._check()
        return ClockSample(self.gateway.offset_ms, 2.0)

    async def fetch_catalogue(self) -> bytes:
        self._check()
        return self.gateway.catalogue

    async def fetch_artifact(self, sha256: str) -> bytes:
        self._check()
        return self.gateway.artifacts[sha256]
