"""Simulated radio links for the fleet's SDK phones: a `Transport` wrapper that adds latency, loss and
outages to a real one (``GatewayTransport`` in the demo).

A :class:`LinkProfile` says what a link does: an added round trip (half each way) with jitter, a share
of frames lost, mean time between outages and how long they last, and a download rate. One
:class:`PhoneLink` is a phone's radio: every region's transport of that phone goes through it, so an
outage cuts them all at once (the phone is offline, not one region). :class:`LinkTransport` wraps one
region's transport:

* **latency**: every frame, out (envelopes, acks, reports, requests) and in (events), is released
  ``rtt/2`` plus jitter after it was handed over, in order (a later frame never overtakes an earlier
  one, as on one TCP connection); the SDK's clock exchange therefore measures the added round trip,
  and its tier choice sees a slow link;
* **loss**: WebSocket runs over TCP, so a lost segment is resent by TCP, not lost to the application:
  a frame is "lost" with probability ``loss`` and arrives one retransmission timeout later (at least
  200 ms), holding back the frames behind it (head-of-line blocking);
* **outage**: the connection is cut (the inner transport is closed: the gateway sees the session end
  and holds the device's unacknowledged replies), frames in flight either way are lost, sends fail
  and connects are refused until the outage ends; then a fresh inner transport connects (the gateway
  redelivers what it held) and the SDK sees ``Disconnected`` then ``Connected``;
* **bandwidth**: a model download takes its size over the link's rate (the SDK measures it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, Literal

from edgestream.device.transport import (
    ClockSample,
    Connected,
    Disconnected,
    Event,
    TransportUnavailable,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from edgestream.device.transport import Transport

log = logging.getLogger(__name__)

LinkName = Literal["wifi", "4g", "3g-flaky"]
"""The link profiles the fleet knows (``PROFILES``)."""
MIN_RTO_MS: Final = 200.0
"""TCP's smallest retransmission timeout: what one lost segment adds at least."""
RECONNECT_S: Final = (0.2, 2.0)
"""After an outage, the first and the longest wait between attempts to connect again."""


@dataclass(frozen=True, slots=True)
class LinkProfile:
    """What one kind of link does to a phone's frames."""

    name: str
    rtt_ms: float
    """Round trip it adds (half each way)."""
    jitter_ms: float
    """Up to this much more, each way, drawn per frame."""
    loss: float
    """Share of frames lost once (and resent by TCP one timeout later)."""
    outage_every_s: float | None
    """Mean time between outages (exponentially distributed); None: no outages."""
    outage_s: tuple[float, float]
    """Shortest and longest outage, uniformly drawn."""
    bandwidth_kbps: float | None
    """Download rate of model artifacts, kbit/s; None: not limited."""

    @property
    def rto_ms(self) -> float:
        """What one lost frame adds: a TCP retransmission timeout."""
        return max(MIN_RTO_MS, self.rtt_ms + 4 * self.jitter_ms)


PROFILES: Final[Mapping[str, LinkProfile]] = MappingProxyType(
    {
        "wifi": LinkProfile("wifi", 8.0, 4.0, 0.0, None, (0.0, 0.0), None),
        "4g": LinkProfile("4g", 50.0, 15.0, 0.01, None, (0.0, 0.0), 8_000.0),
        # Past the SDK's 150 ms "slow" round trip: it asks for one tier less.
        "3g-flaky": LinkProfile("3g-flaky", 170.0, 40.0, 0.03, 15.0, (1.5, 3.5), 400.0),
    }
)
"""The fleet's link profiles by name."""


class PhoneLink:
    """One phone's radio: its profile, its random draws and its outages, shared by every region's
    transport of the phone."""

    def __init__(self, profile: LinkProfile, rng: random.Random) -> None:
        self.profile = profile
        self._rng = rng
        self.down = False
        """Whether the phone is offline now."""
        self.outages = 0
        """Outages begun so far."""
        self.down_s = 0.0
        """Time spent offline so far."""
        self._transports: list[LinkTransport] = []
        self._task: asyncio.Task[None] | None = None

    def delay_s(self) -> float:
        """One frame's one-way delay: half the round trip, jitter, and a retransmission when lost."""
        p = self.profile
        delay_ms = p.rtt_ms / 2 + self._rng.uniform(0.0, p.jitter_ms)
        if p.loss > 0 and self._rng.random() < p.loss:
            delay_ms += p.rto_ms
        return delay_ms / 1000.0

    def attach(self, transport: LinkTransport) -> None:
        """Route ``transport`` through this link (its outages cut it)."""
        self._transports.append(transport)

    def start(self) -> None:
        """Begin the outages (none for a profile without them)."""
        if self.profile.outage_every_s is not None and self._task is None:
            self._task = asyncio.create_task(self._outages(self.profile.outage_every_s))

    async def stop(self) -> None:
        """Stop the outages (the link stays as it is now)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _outages(self, every_s: float) -> None:
        low, high = self.profile.outage_s
        while True:
            await asyncio.sleep(self._rng.expovariate(1.0 / every_s))
            length_s = self._rng.uniform(low, high)
            await self.outage(length_s)

    async def outage(self, length_s: float) -> None:
        """Be offline for ``length_s``: every transport is cut, then connects again."""
        self.down, self.outages = True, self.outages + 1
        started = time.monotonic()
        try:
            for transport in self._transports:
                await transport.cut()
            await asyncio.sleep(length_s)
        finally:
            self.down = False
            self.down_s += time.monotonic() - started
        for transport in self._transports:
            transport.restore()


class LinkTransport:
    """One region's `Transport`, through a phone's :class:`PhoneLink` (module docstring)."""

    def __init__(self, region: str, make: Callable[[], Transport], link: PhoneLink) -> None:
        self._region = region
        self._make = make
        self.link = link
        self._inner: Transport | None = None
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._generation = 0
        """Bumped by every cut: frames of an older generation are lost."""
        self._out_at = self._in_at = 0.0
        self._out: asyncio.Queue[tuple[float, int, Callable[[Transport], Awaitable[None]]]] = asyncio.Queue()
        self._in: asyncio.Queue[tuple[float, int, Event]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._reader: asyncio.Task[None] | None = None
        self._restoring: asyncio.Task[None] | None = None
        self._wanted = False
        """Whether the SDK wants this region connected (it connected it and did not close it)."""
        self._closed = False
        self.connects = 0
        """Sessions established through this link (the first and every reconnect)."""
        link.attach(self)

    @property
    def region(self) -> str:
        """The region this transport reaches."""
        return self._region

    @property
    def connected(self) -> bool:
        """Whether a session is up and the link is not in an outage."""
        return not self.link.down and self._inner is not None and self._inner.connected

    @property
    def events(self) -> asyncio.Queue[Event]:
        """Every event, as delayed by the link."""
        return self._events

    async def connect(self, timeout_s: float) -> None:
        """Connect the inner transport (refused while the link is down)."""
        if self._closed:
            raise TransportUnavailable(self._region, "closed", "the transport was closed")
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._send_loop()), asyncio.create_task(self._release_loop())]
        await self._open(timeout_s)
        self._wanted = True

    async def _open(self, timeout_s: float) -> None:
        if self.link.down:
            raise TransportUnavailable(self._region, "unreachable", "the link is down")
        inner = self._inner
        if inner is None:
            inner = self._inner = self._make()
            self._reader = asyncio.create_task(self._read(inner, self._generation))
        await asyncio.sleep(2 * self.link.delay_s())  # the handshake crosses the link too
        if self._inner is not inner:  # cut meanwhile
            raise TransportUnavailable(self._region, "unreachable", "the link went down")
        await inner.connect(timeout_s)

    async def close(self) -> None:
        """Close the inner transport and stop. Idempotent."""
        self._closed, self._wanted = True, False
        tasks = [*self._tasks, *(t for t in (self._reader, self._restoring) if t is not None)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []
        inner, self._inner = self._inner, None
        if inner is not None:
            await inner.close()

    async def cut(self) -> None:
        """The link went down: close the session; frames in flight are lost."""
        self._generation += 1
        inner, self._inner = self._inner, None
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None
        if inner is None:
            return
        was_up = inner.connected
        await inner.close()
        if was_up:
            self._events.put_nowait(Disconnected(self._region, "network"))

    def restore(self) -> None:
        """The link is back: connect again (in the background) if the SDK wanted this region."""
        if self._wanted and not self._closed and (self._restoring is None or self._restoring.done()):
            self._restoring = asyncio.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        wait_s, longest_s = RECONNECT_S
        while self._wanted and not self._closed and not self.link.down:
            try:
                await self._open(5.0)
                return
            except TransportUnavailable as err:
                log.debug("reconnecting to %s after an outage failed: %s", self._region, err)
            await asyncio.sleep(wait_s)
            wait_s = min(longest_s, wait_s * 2)

    # --- frames out -------------------------------------------------------------------------------

    def _enqueue(self, send: Callable[[Transport], Awaitable[None]]) -> None:
        if not self.connected:
            raise TransportUnavailable(self._region, "closed", "no session")
        self._out_at = max(self._out_at + 1e-6, time.monotonic() + self.link.delay_s())
        self._out.put_nowait((self._out_at, self._generation, send))

    async def _send_loop(self) -> None:
        while True:
            at, generation, send = await self._out.get()
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            inner = self._inner
            if generation != self._generation or inner is None:
                continue  # cut while in flight: lost
            with contextlib.suppress(TransportUnavailable):  # dropped under it: lost, as in a cut
                await send(inner)

    async def send(self, kind: str, envelope: bytes, *, fallbacks: int = 0) -> None:
        """Hand one envelope to the link (it reaches the gateway after the link's delay)."""
        self._enqueue(lambda t: t.send(kind, envelope, fallbacks=fallbacks))

    async def ack(self, request_ids: list[bytes]) -> None:
        """Acknowledge replies, across the link."""
        ids = list(request_ids)
        self._enqueue(lambda t: t.ack(ids))

    async def report(self, body: bytes) -> None:
        """Send one device report, across the link."""
        self._enqueue(lambda t: t.report(body))

    # --- requests with an answer ------------------------------------------------------------------

    def _ready(self) -> Transport:
        inner = self._inner
        if inner is None or not self.connected:
            raise TransportUnavailable(self._region, "closed", "no session")
        return inner

    async def sync_clock(self) -> ClockSample:
        """One time exchange, across the link: the round trip measured includes the link's."""
        started = time.monotonic()
        inner = self._ready()
        await asyncio.sleep(self.link.delay_s())
        sample = await inner.sync_clock()
        await asyncio.sleep(self.link.delay_s())
        return ClockSample(sample.offset_ms, (time.monotonic() - started) * 1000.0)

    async def fetch_catalogue(self) -> bytes:
        """The signed catalogue, across the link."""
        return await self._fetch(lambda t: t.fetch_catalogue())

    async def fetch_artifact(self, sha256: str) -> bytes:
        """A model artifact, across the link at its download rate."""
        return await self._fetch(lambda t: t.fetch_artifact(sha256))

    async def _fetch(self, get: Callable[[Transport], Awaitable[bytes]]) -> bytes:
        inner = self._ready()
        await asyncio.sleep(self.link.delay_s())
        data = await get(inner)
        rate = self.link.profile.bandwidth_kbps
        transfer_s = len(data) * 8 / 1000 / rate if rate else 0.0
        await asyncio.sleep(self.link.delay_s() + transfer_s)
        return data

    # --- frames in --------------------------------------------------------------------------------

    async def _read(self, inner: Transport, generation: int) -> None:
        """Timestamp each event of ``inner`` as it arrives; the release loop hands it on later."""
        while True:
            event = await inner.events.get()
            if isinstance(event, Connected):
                self.connects += 1
            self._in_at = max(self._in_at + 1e-6, time.monotonic() + self.link.delay_s())
            self._in.put_nowait((self._in_at, generation, event))

    async def _release_loop(self) -> None:
        while True:
            at, generation, event = await self._in.get()
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            if generation == self._generation:
                self._events.put_nowait(event)
