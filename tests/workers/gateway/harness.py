"""What the gateway tests share: the gateway's files in a temporary home, stand-ins for its Kafka clients
(for tests without a broker), raw WebSocket clients for hostile devices, and a deduping device (what
the SDK does with redelivered replies) to prove the reconnect property."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
from aiokafka import TopicPartition
from websockets.asyncio.client import ClientConnection, connect

from edgestream.device.gateway_client import GatewayTransport, client_context
from edgestream.device.transport import Event, RegionEndpoint, Reply, TransportUnavailable
from edgestream.pipeline.contract.codec import encode_tensor
from edgestream.pipeline.contract.envelope import Kind, seal
from edgestream.pipeline.contract.gatewayauth import (
    derive_auth_key,
    directory_keys,
    sign_transcript,
    transcript,
    write_directory,
)
from edgestream.pipeline.contract.gatewayframes import Auth, auth_frame, decode_frame, parse_hello
from edgestream.pipeline.contract.reply import ReplyHeader, ReplyKey, seal_reply
from edgestream.pipeline.security.identities import Identity
from edgestream.pipeline.security.pki import Pki
from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.gateway.server import Gateway
from edgestream.workers.gateway.settings import GatewaySettings

REGION = "eu-west"


def device_key(device_id: str) -> bytes:
    """A test device's key (any 32 bytes do: the gateway sees only the public auth key)."""
    return hashlib.sha256(device_id.encode()).digest()


@dataclass
class GatewayHome:
    """A temporary home with the PKI (the gateway's server certificate) and a device directory."""

    home: Path
    region: str = REGION

    def __post_init__(self) -> None:
        Pki.in_home(self.home).ensure([Identity.gateway(self.region, "wss")])

    @property
    def ca_file(self) -> str:
        return str(Pki.in_home(self.home).ca_file)

    def enrol(self, devices: dict[str, bytes], key_id: int = 1) -> None:
        """Write the directory of ``devices`` (id -> device key)."""
        path = self.home / "gateway" / self.region / "directory.json"
        write_directory(path, self.region, directory_keys((d, key_id, k) for d, k in devices.items()))

    def settings(self, kafka: KafkaSettings | None = None, **overrides: Any) -> GatewaySettings:
        values: dict[str, Any] = {
            "region": self.region,
            "home": self.home,
            "port": 0,
            "node_id": "gw-test",
            "kafka": kafka or KafkaSettings(),
            "ping_interval_s": None,
        }
        values.update(overrides)
        return GatewaySettings(**values)

    def endpoint(self, gateway: Gateway) -> RegionEndpoint:
        return RegionEndpoint(self.region, f"wss://localhost:{gateway.port}/v1", 48.0, 2.0, self.ca_file)


# -- stand-ins for the Kafka clients ------------------------------------------------------------------


@dataclass
class Produced:
    topic: str
    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]]


@dataclass
class FakeProducer:
    """Acks every send at once (or fails it, when ``fail`` is set; or leaves it pending in ``held``,
    when ``hold`` is)."""

    sent: list[Produced] = field(default_factory=list)
    fail: bool = False
    hold: bool = False
    held: list[asyncio.Future[Any]] = field(default_factory=list)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None
    ) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.fail:
            future.set_exception(ConnectionError("broker down"))
        else:
            self.sent.append(Produced(topic, value, key, list(headers or [])))
            if self.hold:
                self.held.append(future)
            else:
                future.set_result(None)
        return future


@dataclass
class FakeReplies:
    """The replies topic: tests `push` records; ``getmany`` hands them out."""

    queue: asyncio.Queue[tuple[bytes, bytes]] = field(default_factory=asyncio.Queue)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def topics(self) -> set[str]:
        return set()

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0}

    def assign(self, tps: list[TopicPartition]) -> None:
        pass

    async def seek_to_end(self, *tps: TopicPartition) -> None:
        pass

    async def position(self, tp: TopicPartition) -> int:
        return 0

    async def getmany(self, timeout_ms: int = 0) -> dict[TopicPartition, list[Any]]:
        try:
            first = await asyncio.wait_for(self.queue.get(), timeout_ms / 1000)
        except TimeoutError:
            return {}
        records = [first]
        while not self.queue.empty():
            records.append(self.queue.get_nowait())
        return {TopicPartition("r", 0): [_Record(k, v) for k, v in records]}

    def push(self, device_id: str, sealed: bytes) -> None:
        self.queue.put_nowait((device_id.encode(), sealed))


@dataclass
class _Record:
    key: bytes
    value: bytes


@asynccontextmanager
async def fake_gateway(
    home: GatewayHome, **overrides: Any
) -> AsyncIterator[tuple[Gateway, FakeProducer, FakeReplies]]:
    """A gateway on a free port whose Kafka clients are stand-ins."""
    producer, replies = FakeProducer(), FakeReplies()
    gateway = Gateway(home.settings(**overrides), producer=cast(Any, producer), replies=cast(Any, replies))
    async with gateway:
        yield gateway, producer, replies


# -- devices ------------------------------------------------------------------------------------------

DEVICES = {f"dev-{n}": device_key(f"dev-{n}") for n in range(3)}
"""The enrolled test devices (id -> device key)."""


def transport(
    home: GatewayHome, gateway: Gateway, device_id: str = "dev-0", key: bytes | None = None, key_id: int = 1
) -> GatewayTransport:
    """The SDK's transport for ``device_id`` to ``gateway``, reconnecting quickly."""
    return GatewayTransport(
        home.endpoint(gateway),
        device_id,
        key if key is not None else DEVICES[device_id],
        key_id,
        backoff_min_s=0.01,
        backoff_max_s=0.05,
    )


async def next_event(t: GatewayTransport, kind: Any, timeout_s: float = 10.0) -> Any:
    """The transport's next event of ``kind`` (others are skipped)."""
    async with asyncio.timeout(timeout_s):
        while True:
            event = await t.events.get()
            if isinstance(event, kind):
                return event


def envelope(device_id: str, key: bytes, *, kind: Kind = "embedding", rid: bytes | None = None) -> bytes:
    """A real sealed envelope of ``device_id``."""
    body = encode_tensor(np.zeros(4, dtype=np.float32), "float16")
    return seal(
        body,
        device_key=key,
        device_id=device_id,
        key_id=1,
        kind=kind,
        model="embedding-scorer",
        request_id=rid,
    )


def sealed_reply(device_id: str, rid: bytes, *, region: str = REGION) -> bytes:
    """A reply sealed to ``device_id`` (its content does not matter to the gateway)."""
    header = ReplyHeader(request_id=rid, key_id=1, model="m", model_version=1)
    return seal_reply(b"\x80", ReplyKey(device_key(device_id)), header, region)


async def raw_client(
    home: GatewayHome, gateway: Gateway, max_size: int = 2**20
) -> tuple[ClientConnection, bytes, bytes]:
    """A bare WebSocket session: the connection, the hello's nonce and the certificate's hash."""
    ws = await connect(
        f"wss://localhost:{gateway.port}/v1",
        ssl=client_context(home.ca_file),
        compression=None,
        max_size=max_size,
    )
    der = ws.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
    hello = parse_hello(decode_frame(await ws.recv()))
    return ws, hello.nonce, hashlib.sha256(der).digest()


def signed_auth(
    device_id: str, key: bytes, server_nonce: bytes, cert_sha256: bytes, key_id: int = 1
) -> bytes:
    """An auth frame as an honest device signs it."""
    nonce = os.urandom(32)
    data = transcript(
        region=REGION,
        cert_sha256=cert_sha256,
        server_nonce=server_nonce,
        client_nonce=nonce,
        device_id=device_id,
        key_id=key_id,
    )
    return auth_frame(Auth(device_id, key_id, nonce, sign_transcript(derive_auth_key(key), data)))


async def answer(ws: ClientConnection) -> dict[str, Any]:
    """The next frame from the gateway."""
    return decode_frame(await asyncio.wait_for(ws.recv(), 10))


@dataclass
class DedupingDevice:
    """What the SDK does with replies: ack each one it receives, keep the first copy of each request id."""

    transport: GatewayTransport
    first: dict[bytes, bytes] = field(default_factory=dict)
    copies: int = 0
    """Second (or later) copies received and dropped."""
    events: list[Event] = field(default_factory=list)

    async def drain(self) -> None:
        while True:
            event = await self.transport.events.get()
            self.events.append(event)
            if isinstance(event, Reply):
                if event.request_id in self.first:
                    self.copies += 1
                else:
                    self.first[event.request_id] = event.sealed
                if self.transport.connected:
                    with contextlib.suppress(TransportUnavailable):  # dropped: it comes again
                        await self.transport.ack([event.request_id])
