"""The seam between the device SDK's logic and the wire: what a transport to one region offers.

`GatewayTransport` (``gateway_client.py``) implements it over WebSocket + TLS to a region's gateway;
unit tests of the SDK's logic use an in-memory transport with the same shape. A transport is one
region's connection; the SDK holds one per region it uses and fails over between them.

Events arrive on an `asyncio.Queue` the transport owns (`events`): a transport never calls back into
the SDK, so a slow SDK cannot stall the transport's reader and no callback can raise into it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol


class TransportUnavailable(Exception):
    """The gateway cannot be reached, refused the session, or the session dropped while sending."""

    def __init__(self, region: str, reason: str, detail: str = "") -> None:
        super().__init__(f"{region}: {reason}" + (f" ({detail})" if detail else ""))
        self.region = region
        """The region whose gateway is unavailable."""
        self.reason = reason
        """A stable code: ``unreachable``, ``tls``, ``refused:<gateway reason>``, ``closed``, ``timeout``."""


@dataclass(frozen=True, slots=True)
class RegionEndpoint:
    """Where a region's gateway listens and how a device trusts it."""

    region: str
    """The region's name (also bound into the authentication transcript and every reply's AAD)."""
    url: str
    """``wss://host:port/v1``."""
    lat: float
    """The region's latitude in degrees (for nearest-region choice)."""
    lon: float
    """The region's longitude in degrees."""
    ca_file: str
    """PEM file of the CA that signs the gateway's server certificate."""


@dataclass(frozen=True, slots=True)
class Connected:
    """A session was established (first connect or a reconnect)."""

    region: str
    session_id: bytes
    """16 random bytes naming the session on the gateway."""
    redelivered: int
    """Replies the gateway held for this device while it was away, now being delivered."""


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The session dropped; the transport reconnects on its own unless closed."""

    region: str
    reason: str
    """``closed``, ``replaced`` (another session of this device), ``refused:<reason>``, ``network``."""


@dataclass(frozen=True, slots=True)
class Accepted:
    """The gateway's producer had the envelope acknowledged by the broker (it is durable)."""

    request_id: bytes


@dataclass(frozen=True, slots=True)
class Rejected:
    """The gateway refused an envelope before producing it (the envelope is not in Kafka)."""

    request_id: bytes | None
    """The envelope's request id, or ``None`` when the frame was too malformed to read one."""
    reason: str
    """A stable code (``docs/contract.md``, "Gateway"), e.g. ``rate_limited``, ``too_large``."""
    detail: str


@dataclass(frozen=True, slots=True)
class Reply:
    """A sealed reply for this device, exactly as the edge put it on the replies topic."""

    request_id: bytes
    sealed: bytes
    """Bytes for ``open_reply(sealed, reply_key, region)``; the transport never opens them."""


Event = Connected | Disconnected | Accepted | Rejected | Reply
"""Everything a transport reports."""


@dataclass(frozen=True, slots=True)
class ClockSample:
    """One server-time exchange: ``offset_ms`` = server time - the device's wall clock at the midpoint."""

    offset_ms: float
    rtt_ms: float


class Transport(Protocol):
    """One region's connection to its gateway."""

    @property
    def region(self) -> str:
        """The region this transport reaches."""
        ...

    @property
    def connected(self) -> bool:
        """Whether a session is established now."""
        ...

    @property
    def events(self) -> asyncio.Queue[Event]:
        """Every event in arrival order (unbounded; the SDK drains it)."""
        ...

    async def connect(self, timeout_s: float) -> None:
        """Establish a session (TLS, challenge-response); raise `TransportUnavailable` on failure."""
        ...

    async def close(self) -> None:
        """End the session and stop reconnecting. Idempotent."""
        ...

    async def send(self, kind: str, envelope: bytes, *, fallbacks: int = 0) -> None:
        """Hand one sealed envelope of ``kind`` to the gateway (returns once written to the socket).
        ``fallbacks`` (>= 1) reports local-fallback answers since this model's previous record.
        Raises `TransportUnavailable` when no session is up."""
        ...

    async def ack(self, request_ids: list[bytes]) -> None:
        """Tell the gateway these replies were received, so it stops holding them."""
        ...

    async def report(self, body: bytes) -> None:
        """Send one device report (msgpack, ``docs/contract.md`` "Device reports") to the region."""
        ...

    async def sync_clock(self) -> ClockSample:
        """Ask the gateway for its time; one round trip."""
        ...

    async def fetch_catalogue(self) -> bytes:
        """The region's signed device catalogue, as the registry signed it (the caller verifies)."""
        ...

    async def fetch_artifact(self, sha256: str) -> bytes:
        """One model artifact named in the catalogue (the caller verifies its hash)."""
        ...
