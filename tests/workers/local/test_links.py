"""The phones' simulated links: delay in order, TCP-like loss, outages that cut and restore sessions;
the SDK through a link."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from pathlib import Path

import pytest

from edgestream.device.answers import ClientSettings
from edgestream.device.client import EdgeClient
from edgestream.device.identity import DeviceIdentity, RegionKey
from edgestream.device.loopback import LoopbackGateway, LoopbackTransport
from edgestream.device.transport import (
    Accepted,
    ClockSample,
    Connected,
    Disconnected,
    Event,
    TransportUnavailable,
)
from edgestream.pipeline.models import ModelStore, load_dataset
from edgestream.pipeline.registry import Manifest, ModelState, SigningKey, TrustedKeys, publish
from edgestream.pipeline.registry.devicecatalogue import build_catalogue, sign_catalogue
from edgestream.workers.local.links import PROFILES, LinkProfile, LinkTransport, PhoneLink


class _Inner:
    """A transport standing for a gateway session: records what arrives, and when."""

    def __init__(self, made: list[_Inner]) -> None:
        made.append(self)
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.connected = False
        self.closed = False
        self.sent: list[tuple[float, bytes]] = []
        self.acked: list[bytes] = []
        self._arrived = asyncio.Condition()

    async def until_sent(self, count: int) -> None:
        """Wait (bounded) until ``count`` envelopes arrived."""
        async with asyncio.timeout(5.0), self._arrived:
            await self._arrived.wait_for(lambda: len(self.sent) >= count)

    @property
    def region(self) -> str:
        return "eu"

    async def connect(self, timeout_s: float) -> None:
        self.connected = True
        self.events.put_nowait(Connected("eu", b"s" * 16, 0))

    async def close(self) -> None:
        self.connected, self.closed = False, True

    async def send(self, kind: str, envelope: bytes, *, fallbacks: int = 0) -> None:
        if not self.connected:
            raise TransportUnavailable("eu", "closed")
        self.sent.append((time.monotonic(), envelope))
        async with self._arrived:
            self._arrived.notify_all()

    async def ack(self, request_ids: list[bytes]) -> None:
        self.acked.extend(request_ids)

    async def report(self, body: bytes) -> None:
        del body

    async def sync_clock(self) -> ClockSample:
        return ClockSample(0.0, 0.1)

    async def fetch_catalogue(self) -> bytes:
        return b"catalogue"

    async def fetch_artifact(self, sha256: str) -> bytes:
        return b"x" * 5000


def _link(profile: LinkProfile) -> tuple[LinkTransport, PhoneLink, list[_Inner]]:
    made: list[_Inner] = []
    link = PhoneLink(profile, random.Random(1))
    return LinkTransport("eu", lambda: _Inner(made), link), link, made


def _up(transport: LinkTransport) -> bool:
    return transport.connected


async def _next(transport: LinkTransport) -> Event:
    return await asyncio.wait_for(transport.events.get(), 5.0)


async def test_frames_cross_the_link_late_and_in_order() -> None:
    slow = LinkProfile("slow", 120.0, 30.0, 0.0, None, (0.0, 0.0), 80.0)
    transport, _, made = _link(slow)
    try:
        await transport.connect(5.0)
        assert isinstance(await _next(transport), Connected)
        sent_at = time.monotonic()
        for n in range(20):
            await transport.send("embedding", bytes([n]))
        await made[0].until_sent(20)
        assert [body for _, body in made[0].sent] == [bytes([n]) for n in range(20)], "never reordered"
        assert made[0].sent[0][0] - sent_at >= 0.06, "half the round trip, at least"
        made[0].events.put_nowait(Accepted(b"r" * 16))
        assert await _next(transport) == Accepted(b"r" * 16)
        # The SDK's clock exchange measures the link's round trip; a download goes at its rate.
        sample = await transport.sync_clock()
        assert sample.rtt_ms >= 120.0
        started = time.monotonic()
        assert await transport.fetch_artifact("ab") == b"x" * 5000
        assert time.monotonic() - started >= 5000 * 8 / 1000 / 80.0  # 0.5 s at 80 kbit/s
    finally:
        await transport.close()
    assert made[0].closed


async def test_a_lost_frame_comes_one_retransmission_later() -> None:
    lossy = LinkProfile("lossy", 10.0, 0.0, 1.0, None, (0.0, 0.0), None)
    assert lossy.rto_ms == 200.0
    transport, _, made = _link(lossy)
    try:
        await transport.connect(5.0)
        sent_at = time.monotonic()
        await transport.send("embedding", b"e")
        await made[0].until_sent(1)
        assert made[0].sent[0][0] - sent_at >= 0.2
    finally:
        await transport.close()


async def test_an_outage_cuts_the_session_loses_what_is_in_flight_and_reconnects() -> None:
    profile = LinkProfile("far", 400.0, 0.0, 0.0, None, (0.0, 0.0), None)
    transport, link, made = _link(profile)
    other_made: list[_Inner] = []
    other = LinkTransport("us", lambda: _Inner(other_made), link)  # the same phone's other region
    try:
        await transport.connect(5.0)
        assert isinstance(await _next(transport), Connected)
        await transport.send("embedding", b"in flight")  # 200 ms on its way when the link goes down
        outage = asyncio.create_task(link.outage(0.5))
        await asyncio.sleep(0.05)
        assert link.down
        assert not _up(transport)
        assert await _next(transport) == Disconnected("eu", "network")
        with pytest.raises(TransportUnavailable):
            await transport.send("embedding", b"refused")
        with pytest.raises(TransportUnavailable):
            await other.connect(1.0)  # the phone is offline: every region is unreachable
        await outage
        assert isinstance(await _next(transport), Connected), "a fresh session once the link is back"
        assert _up(transport)
        assert len(made) == 2
        assert made[0].closed
        assert [m.sent for m in made] == [[], []], "the frame in flight was lost"
        assert (link.outages, transport.connects) == (1, 2)
        assert other_made == [], "a region the phone never connected is not connected by the link"
    finally:
        await transport.close()
        await other.close()


def test_the_profiles_step_the_sdk_tier_down_only_on_the_slow_link() -> None:
    from edgestream.device.tiers import SLOW_RTT_MS

    slow = [name for name, p in PROFILES.items() if p.rtt_ms >= SLOW_RTT_MS]
    assert slow == ["3g-flaky"]
    assert PROFILES["3g-flaky"].outage_every_s is not None
    assert all(PROFILES[n].outage_every_s is None for n in ("wifi", "4g"))


def _catalogue(tmp_path: Path) -> tuple[SigningKey, bytes, bytes]:
    """A signed catalogue naming the zoo's tiny embedding model, and the model's bytes."""
    tiny = ModelStore(tmp_path / "models").get("embedding-scorer", "tiny")
    data = tiny.path.read_bytes()
    key = SigningKey.generate()
    manifest = Manifest("embedding-scorer", 1, "tiny", tiny.sha256, len(data), "float16", (30,))
    state = publish(ModelState("embedding-scorer"), key.sign(manifest), now_ms=1)
    now_ms = int(time.time() * 1000) - 1000
    return key, sign_catalogue(key, build_catalogue({"embedding-scorer": state}, now_ms=now_ms)), data


async def test_the_sdk_through_a_link_resends_less_and_less_often(tmp_path: Path) -> None:
    """An edge that never confirms gets a few copies of the request, each wait twice the last, not a
    copy every interval (which fed an overload in the demo), and every copy is the same bytes."""
    key, catalogue, artifact = _catalogue(tmp_path)
    sha = json.loads(catalogue)["catalogue"]["models"][0]["sha256"]
    gateway = LoopbackGateway(
        "eu-west", os.urandom(32), catalogue, {sha: artifact}, accept=False, answer=False
    )
    link = PhoneLink(PROFILES["wifi"], random.Random(3))
    identity = DeviceIdentity.of("phone-1", {"eu-west": RegionKey(1, gateway.device_key)})
    settings = ClientSettings(resend_interval_ms=100, max_resend_interval_ms=400, tick_s=0.01)
    client = EdgeClient(
        identity,
        [gateway.endpoint(48.0, 2.0)],
        lambda endpoint: LinkTransport(endpoint.region, lambda: LoopbackTransport(gateway), link),
        TrustedKeys().with_key(key.public_raw),
        tmp_path / "cache",
        settings,
    )
    await client.start()
    try:
        x = load_dataset("embedding").X_test[0]
        answer = await client.infer(x, 1500, kind="embedding")
    finally:
        await client.close()
    assert (answer.source, answer.why) == ("fallback", "deadline")
    copies = [envelope for _, envelope, _ in gateway.sent]
    assert set(copies) == {copies[0]}
    # Waits of 100, 200, 400, 400 ms fit in the deadline: at most 5 copies (14 at a fixed 100 ms).
    assert 2 <= len(copies) <= 5, len(copies)
    assert client.stats.resends == len(copies) - 1
