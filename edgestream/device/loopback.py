"""A loopback `Transport`: an in-memory gateway and edge, for an app's tests and the SDK's own.

No network and no Kafka: `LoopbackGateway` stands for one region's gateway and edge worker, with real
contract code on both sides: it decodes and opens each envelope with the device's key
(``decode_envelope``/``open_envelope``) and answers with a result record sealed to the device
(``seal_reply``) after ``delay_s``. Knobs make it slow, silent (no ``accepted``, no reply),
duplicating, tampering, sealing to another device, rejecting or down; it records what it was sent,
acknowledged and reported. `LoopbackTransport` is the `Transport` protocol over it.
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
from edgestream.pipeline.contract.envelope import Envelope, decode_envelope, open_envelope
from edgestream.pipeline.contract.records import ResultRecord
from edgestream.pipeline.contract.reply import ReplyHeader, ReplyKey, seal_reply


def _one(x: np.ndarray[Any, Any]) -> int:
    """The default edge model: class 1 for everything."""
    del x
    return 1


@dataclass
class LoopbackGateway:
    """One region's gateway and edge, in memory."""

    region: str
    """The region it stands for (bound into every reply's AAD)."""
    device_key: bytes
    """The device's key in this region: opens its envelopes, derives the reply key."""
    catalogue: bytes
    """What ``fetch_catalogue`` returns (a signed catalogue file)."""
    artifacts: dict[str, bytes]
    """What ``fetch_artifact`` returns, by sha256."""
    label_of: Callable[[np.ndarray[Any, Any]], int] = _one
    """The edge's model: the label for one decoded input."""
    classes: int = 2
    """Width of the scores it answers with."""
    version: int = 1
    """The model version it answers with when the envelope pins none."""
    delay_s: float = 0.0
    """How long the edge takes to reply."""
    accept: bool = True
    """Whether it sends ``accepted`` for each envelope."""
    answer: bool = True
    """Whether the edge replies at all."""
    copies: int = 1
    """Copies of each reply (an at-least-once edge, a redelivery)."""
    tamper: bool = False
    """Flip a bit of each reply's tag."""
    down: bool = False
    """Refuse connections (``unreachable``)."""
    connect_delay_s: float = 0.0
    """How long a connection takes (TLS and auth over a slow link)."""
    sessions: int = 0
    """Sessions opened (a second one at once would replace the first, as a gateway does)."""
    reject: str | None = None
    """Answer each envelope with ``rejected`` and this reason instead."""
    other_device_key: bytes | None = None
    """Seal replies under this key instead (another device's)."""
    offset_ms: float = 0.0
    """Its clock minus the device's, as ``sync_clock`` reports it."""
    sent: list[tuple[str, bytes, int]] = field(default_factory=list)
    """Every envelope sent: (kind, bytes, fallbacks)."""
    acked: list[bytes] = field(default_factory=list)
    """Every request id acknowledged."""
    reports: list[bytes] = field(default_factory=list)
    """Every device report body."""
    catalogue_fetches: int = 0
    """Times the catalogue was fetched."""
    held: dict[bytes, bytes] = field(default_factory=dict)
    """The device's mailbox: replies not yet acknowledged, by request id (redelivered on reconnect,
    as the gateway does)."""
    redelivered: int = 0
    """Replies delivered again on a reconnect."""
    _reply_keys: dict[bytes, ReplyKey] = field(default_factory=dict, repr=False)

    def endpoint(self, lat: float, lon: float) -> RegionEndpoint:
        """An endpoint naming this region at (lat, lon)."""
        return RegionEndpoint(self.region, f"wss://{self.region}.invalid/v1", lat, lon, "ca.pem")

    def reply_for(self, envelope: bytes) -> bytes:
        """The edge's sealed reply to ``envelope``."""
        return self._reply(decode_envelope(envelope, max_envelope_bytes=1 << 20))

    def _reply(self, env: Envelope) -> bytes:
        body = open_envelope(env, self.device_key, max_body_bytes=1 << 20)
        x = decode_tensor(body)
        label = self.label_of(x)
        scores = tuple(0.9 if i == label else 0.1 / max(1, self.classes - 1) for i in range(self.classes))
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
        key = self.other_device_key or self.device_key
        sealer = self._reply_keys.get(key)
        if sealer is None:
            sealer = self._reply_keys[key] = ReplyKey(key)
        sealed = seal_reply(record.to_bytes(), sealer, header, self.region)
        if self.tamper:
            sealed = sealed[:-1] + bytes([sealed[-1] ^ 1])
        return sealed


class LoopbackTransport:
    """The `Transport` protocol over a `LoopbackGateway`."""

    def __init__(self, gateway: LoopbackGateway) -> None:
        self.gateway = gateway
        """What it talks to."""
        self._connected = False
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self.connects = 0
        """Calls of `connect`."""

    @property
    def region(self) -> str:
        """The gateway's region."""
        return self.gateway.region

    @property
    def connected(self) -> bool:
        """Whether a session is up."""
        return self._connected

    @property
    def events(self) -> asyncio.Queue[Event]:
        """Everything it reports, in order."""
        return self._events

    async def connect(self, timeout_s: float) -> None:
        """A session, unless the gateway is down."""
        del timeout_s
        self.connects += 1
        if self.gateway.connect_delay_s:
            await asyncio.sleep(self.gateway.connect_delay_s)
        if self.gateway.down:
            raise TransportUnavailable(self.region, "unreachable")
        self.gateway.sessions += 1
        self._connected = True
        self._events.put_nowait(Connected(self.region, b"s" * 16, 0))

    async def close(self) -> None:
        """End the session."""
        self._connected = False

    def drop(self) -> None:
        """The network goes: the session drops (and stays down while the gateway is down)."""
        self.gateway.down = True
        self._connected = False
        self._events.put_nowait(Disconnected(self.region, "network"))

    def restore(self) -> None:
        """The network comes back and the transport reconnects on its own; every reply held for the
        device and not acknowledged is delivered again."""
        g = self.gateway
        g.down = False
        self._connected = True
        self._events.put_nowait(Connected(self.region, b"s" * 16, len(g.held)))
        for rid, sealed in g.held.items():
            g.redelivered += 1
            self._events.put_nowait(Reply(rid, sealed))

    def _deliver(self, rid: bytes, sealed: bytes) -> None:
        """A reply reaches the mailbox: held until acknowledged, delivered now if a session is up."""
        self.gateway.held.setdefault(rid, sealed)
        if self._connected:
            self._events.put_nowait(Reply(rid, sealed))

    def _check(self) -> None:
        """`TransportUnavailable` unless a session is up."""
        if not self._connected:
            raise TransportUnavailable(self.region, "closed")

    async def send(self, kind: str, envelope: bytes, *, fallbacks: int = 0) -> None:
        """Record it; accept, reject and answer it as the knobs say."""
        self._check()
        g = self.gateway
        g.sent.append((kind, envelope, fallbacks))
        env = decode_envelope(envelope, max_envelope_bytes=1 << 20)
        rid = env.request_id
        if g.reject is not None:
            self._events.put_nowait(Rejected(rid, g.reject, "test"))
            return
        if g.accept:
            self._events.put_nowait(Accepted(rid))
        if g.answer:
            sealed = g._reply(env)
            loop = asyncio.get_running_loop()
            for _ in range(g.copies):
                loop.call_later(g.delay_s, self._deliver, rid, sealed)

    async def ack(self, request_ids: list[bytes]) -> None:
        """Record the acknowledged ids; the mailbox lets them go."""
        self._check()
        self.gateway.acked.extend(request_ids)
        for rid in request_ids:
            self.gateway.held.pop(rid, None)

    async def report(self, body: bytes) -> None:
        """Record the report."""
        self._check()
        self.gateway.reports.append(body)

    async def sync_clock(self) -> ClockSample:
        """The gateway's offset, with a 2 ms round trip."""
        self._check()
        return ClockSample(self.gateway.offset_ms, 2.0)

    async def fetch_catalogue(self) -> bytes:
        """The gateway's catalogue bytes."""
        self._check()
        self.gateway.catalogue_fetches += 1
        return self.gateway.catalogue

    async def fetch_artifact(self, sha256: str) -> bytes:
        """The artifact named ``sha256`` (``KeyError`` when it has none)."""
        self._check()
        return self.gateway.artifacts[sha256]
