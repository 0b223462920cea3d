"""The gateway's limits against hostile or broken peers, over real WebSocket + TLS 1.3 sessions (Kafka
clients are stand-ins): connections that never authenticate hold neither device slots nor, past the
auth timeout, a socket; one address cannot take every pending slot; a device's rate survives its
reconnects and a replaced session handles nothing more; frames of every kind are paced; a session that
stopped reading is closed once; reports and the directory reload hold nothing on the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest

from edgestream.device.transport import Accepted, Rejected, TransportUnavailable
from edgestream.pipeline.contract.envelope import new_request_id
from edgestream.pipeline.contract.gatewayauth import read_directory
from edgestream.pipeline.contract.gatewayframes import encode_frame
from edgestream.workers.gateway import server
from edgestream.workers.gateway.mailbox import TokenBucket
from edgestream.workers.gateway.session import REPLACED, Session

from ..conftest import eventually
from .harness import (
    DEVICES,
    GatewayHome,
    answer,
    device_key,
    envelope,
    fake_gateway,
    next_event,
    raw_client,
    sealed_reply,
    signed_auth,
    transport,
)

# -- connections ---------------------------------------------------------------------------------------


async def test_unauthenticated_connections_take_no_device_slot(home: GatewayHome) -> None:
    """``max_sessions`` counts authenticated devices: strangers that connect and wait do not lock
    devices out (before, every open connection counted). Past it a new device is refused ``overloaded``;
    a device replacing its own session is not."""
    async with fake_gateway(home, max_sessions=1) as (gateway, _, _):
        strangers = [(await raw_client(home, gateway))[0] for _ in range(3)]
        first = transport(home, gateway, "dev-0")
        await first.connect(10)
        other = transport(home, gateway, "dev-1")
        with pytest.raises(TransportUnavailable, match="refused:overloaded"):
            await other.connect(10)
        again = transport(home, gateway, "dev-0")
        await again.connect(10)  # replaces the first: not one more session
        assert list(gateway.sessions) == ["dev-0"]
        for ws in strangers:
            await ws.close()
        await again.close()
        await first.close()


async def test_one_address_cannot_take_every_pending_slot(home: GatewayHome) -> None:
    async with fake_gateway(home, max_pending_per_source=2) as (gateway, _, _):
        strangers = [(await raw_client(home, gateway))[0] for _ in range(2)]
        device = transport(home, gateway)
        with pytest.raises(TransportUnavailable, match="refused:overloaded"):
            await device.connect(10)
        await strangers[0].close()
        assert await eventually(lambda: gateway.pending == 1, timeout_s=10)
        await device.connect(10)  # a slot of that address is free again
        assert gateway.pending_by_source == {"127.0.0.1": 1}
        await strangers[1].close()
        assert await eventually(lambda: not gateway.pending_by_source, timeout_s=10)
        await device.close()


def test_a_source_is_an_ipv4_address_or_an_ipv6_64() -> None:
    """One host or site usually holds a whole IPv6 /64: counted by address it would be any number of
    sources."""
    assert server.source_of(("10.0.0.1", 5)) == "10.0.0.1"
    assert server.source_of(("2001:db8::1", 5, 0, 0)) == server.source_of(("2001:db8::beef", 6, 0, 0))
    assert server.source_of(("2001:db8::1", 5, 0, 0)) == "2001:db8::/64"
    assert server.source_of(("2001:db8:0:1::1", 5, 0, 0)) == "2001:db8:0:1::/64"
    assert server.source_of(("::ffff:10.0.0.2", 5, 0, 0)) == "10.0.0.2"
    assert server.source_of(None) == "?"


async def test_past_as_many_refusals_in_progress_as_pending_slots_a_connection_is_cut_at_once(
    home: GatewayHome,
) -> None:
    """A refusal may take 5 s (a peer that does not read): the refusals in progress are bounded too."""
    async with fake_gateway(home, max_pending=1) as (gateway, _, _):
        stranger, _, _ = await raw_client(home, gateway)
        gateway._refusing = 1  # as if one refusal were still being sent
        device = transport(home, gateway)
        with pytest.raises(TransportUnavailable) as caught:
            await device.connect(10)
        assert caught.value.reason != "refused:overloaded", "cut without a refusal frame"
        assert gateway.metrics.refused["overloaded"]._value.get() == 1
        gateway._refusing = 0
        await stranger.close()


async def test_a_connection_that_never_starts_tls_is_cut_at_the_auth_timeout(home: GatewayHome) -> None:
    """A peer that opens a TCP connection and says nothing is cut at ``auth_timeout_s`` (websockets'
    open timeout runs from the accept; asyncio's own TLS handshake bound is 60 s)."""
    async with fake_gateway(home, auth_timeout_s=0.3) as (gateway, _, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        try:
            async with asyncio.timeout(10):
                with contextlib.suppress(ConnectionResetError):
                    assert await reader.read() == b""
        finally:
            writer.close()


# -- rates -----------------------------------------------------------------------------------------------


async def test_a_device_that_reconnects_keeps_the_rate_it_used(home: GatewayHome) -> None:
    """The envelope bucket is the device's, not the session's: ten sessions of one device had produced
    50 envelopes in 0.5 s where the limit allows 5."""
    async with fake_gateway(home, burst=2, rate_per_s=0.001) as (gateway, producer, _):
        for attempt in range(2):
            t = transport(home, gateway)
            await t.connect(10)
            rid = new_request_id()
            await t.send("embedding", envelope("dev-0", DEVICES["dev-0"], rid=rid))
            assert await next_event(t, Accepted | Rejected) == Accepted(rid), attempt
            await t.close()
            assert await eventually(lambda: "dev-0" not in gateway.sessions, timeout_s=10)
        t = transport(home, gateway)
        await t.connect(10)
        rid = new_request_id()
        await t.send("embedding", envelope("dev-0", DEVICES["dev-0"], rid=rid))
        rejected = await next_event(t, Accepted | Rejected)
        assert isinstance(rejected, Rejected)
        assert (rejected.request_id, rejected.reason) == (rid, "rate_limited")
        assert len(producer.sent) == 2
        await t.close()
        assert await eventually(lambda: "dev-0" not in gateway.sessions, timeout_s=10)
        gateway.forget_buckets(1e12)  # refilled long ago: forgotten, the next session starts full
        t = transport(home, gateway)
        await t.connect(10)
        await t.send("embedding", envelope("dev-0", DEVICES["dev-0"]))
        assert isinstance(await next_event(t, Accepted | Rejected), Accepted)
        await t.close()


class _Socket:
    """A stand-in connection that yields ``frames`` (a session's reading only iterates it)."""

    def __init__(self, frames: list[bytes]) -> None:
        self.frames = frames
        self.closed: list[int] = []

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for frame in self.frames:
            yield frame

    async def close(self, code: int, reason: str) -> None:
        self.closed.append(code)


async def test_a_replaced_session_handles_no_further_frame(home: GatewayHome) -> None:
    """A replaced session is closing: what its peer still sends is dropped (a peer that did not answer
    the close kept producing for the ~10 s the close took)."""
    async with fake_gateway(home) as (gateway, producer, _):
        first = transport(home, gateway)
        await first.connect(10)
        older = gateway.sessions["dev-0"]
        second = transport(home, gateway)
        await second.connect(10)
        assert older.closing
        assert gateway.sessions["dev-0"] is not older
        frames = [encode_frame("env", body=envelope("dev-0", DEVICES["dev-0"])) for _ in range(3)]
        for close_first in (True, False):
            session = Session(gateway, _Socket(frames), "dev-0")  # type: ignore[arg-type]
            if close_first:
                session.close(REPLACED, "replaced")
            await session.read()
            assert len(producer.sent) == (0 if close_first else 3)
        await second.close()
        await first.close()


async def test_a_session_that_fails_before_it_reads_leaves_no_entry(
    home: GatewayHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure between a session's registration and its reading lets the device's entry and bucket
    go (they were left behind, so replies went to a dead session), and the device connects again."""
    async with fake_gateway(home) as (gateway, _, _):
        mailboxes = type(gateway.mailboxes)
        held = mailboxes.held

        def failing(*_: Any) -> Any:
            raise RuntimeError("the mailbox failed")

        monkeypatch.setattr(mailboxes, "held", failing)
        first = transport(home, gateway)
        with contextlib.suppress(TransportUnavailable, OSError):
            await first.connect(10)
        assert await eventually(lambda: "dev-0" not in gateway.sessions, timeout_s=10)
        assert "dev-0" not in gateway._buckets
        monkeypatch.setattr(mailboxes, "held", held)
        second = transport(home, gateway)
        await second.connect(10)
        assert gateway.sessions["dev-0"].device_id == "dev-0"
        await second.close()
        await first.close()


async def test_frames_of_every_kind_are_paced_and_all_answered(home: GatewayHome) -> None:
    """Past ``frame_burst`` a session is read at ``frames_per_s``: nothing refused, nothing lost."""
    async with fake_gateway(home, frames_per_s=20.0, frame_burst=10) as (gateway, _, _):
        ws, nonce, cert = await raw_client(home, gateway)
        await ws.send(signed_auth("dev-0", DEVICES["dev-0"], nonce, cert))
        assert (await answer(ws))["t"] == "welcome"
        loop = asyncio.get_running_loop()
        started = loop.time()
        for echo in range(60):
            await ws.send(encode_frame("time", echo=echo))
        early: list[int] = []
        while loop.time() < started + 0.5:
            try:
                frame = await asyncio.wait_for(ws.recv(), started + 0.5 - loop.time())
            except TimeoutError:
                break
            early.append(1)
            assert frame
        # Within 0.5 s: at most the burst and 0.5 s of the rate (10 + 10), and a margin; unpaced, all 60.
        assert len(early) <= 24, len(early)
        rest = [await answer(ws) for _ in range(60 - len(early))]
        assert [f["echo"] for f in rest] == list(range(len(early), 60))
        assert "dev-0" in gateway.sessions
        await ws.close()


async def test_large_frames_are_paced_by_their_bytes(home: GatewayHome) -> None:
    """Past ``byte_burst`` a session is read at ``bytes_per_s``, whatever its frame count: 200 frames of
    2 MiB a second were 400 MiB/s of TLS and msgpack for the gateway to read from one device."""
    mib = 1 << 20
    async with fake_gateway(home, bytes_per_s=2.0 * mib, byte_burst=mib) as (gateway, _, _):
        ws, nonce, cert = await raw_client(home, gateway, max_size=4 * mib)
        await ws.send(signed_auth("dev-0", DEVICES["dev-0"], nonce, cert))
        assert (await answer(ws))["t"] == "welcome"
        loop = asyncio.get_running_loop()
        started = loop.time()
        for echo in range(6):  # 1 MiB each: one at once, then one each 0.5 s
            await ws.send(encode_frame("time", echo=echo, pad=bytes(mib - 64)))
        early = 0
        while (left := started + 0.6 - loop.time()) > 0:
            try:
                await asyncio.wait_for(ws.recv(), left)
            except TimeoutError:
                break
            early += 1
        assert early <= 3, early  # unpaced: all 6 at once
        rest = [await answer(ws) for _ in range(6 - early)]
        assert [f["echo"] for f in rest] == list(range(early, 6))
        await ws.close()


# -- a session that stopped reading, reports, the directory ---------------------------------------------


async def test_a_session_that_stopped_reading_is_closed_once(home: GatewayHome) -> None:
    async with fake_gateway(home, max_outbox=16) as (gateway, _, replies):
        ws, nonce, cert = await raw_client(home, gateway)
        await ws.send(signed_auth("dev-0", DEVICES["dev-0"], nonce, cert))
        assert (await answer(ws))["t"] == "welcome"
        session = gateway.sessions["dev-0"]
        gate, closes = asyncio.Event(), []

        async def stuck(frame: bytes) -> None:
            await gate.wait()

        async def close(code: int = 1000, reason: str = "") -> None:
            closes.append(code)

        session.ws.send = stuck  # type: ignore[method-assign,assignment]
        session.ws.close = close  # type: ignore[method-assign]
        try:
            for _ in range(40):
                replies.push("dev-0", sealed_reply("dev-0", new_request_id()))
            assert await eventually(lambda: gateway.mailboxes.counts.held == 40, timeout_s=10)
            await asyncio.sleep(0)  # let spawned closes run
            assert closes == [4408]  # before: one close task (and log line) per reply past the outbox
            assert len(gateway.mailboxes.held("dev-0", 0.0)) == 40  # held for its next session
        finally:
            gate.set()
            await ws.close()


async def test_a_report_holds_no_task_while_the_broker_has_not_taken_it(home: GatewayHome) -> None:
    async with fake_gateway(home) as (gateway, producer, _):
        producer.hold = True
        t = transport(home, gateway)
        await t.connect(10)
        for n in range(5):
            await t.report(bytes([n]))
        await t.sync_clock()  # the reports were handled before
        assert [p.value for p in producer.sent] == [bytes([n]) for n in range(5)]
        assert not gateway._tasks  # before: a task per report, awaiting its delivery
        assert gateway.metrics.reports._value.get() == 0
        for future in producer.held:
            future.set_result(None)
        await asyncio.sleep(0)
        assert gateway.metrics.reports._value.get() == 5
        await t.close()


async def test_the_directory_is_read_off_the_event_loop(
    home: GatewayHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[int] = []

    def recorded(*args: Any) -> Any:
        threads.append(threading.get_ident())
        return read_directory(*args)

    async with fake_gateway(home) as (gateway, _, _):
        monkeypatch.setattr(server, "read_directory", recorded)
        home.enrol({**DEVICES, "dev-new": device_key("dev-new")})
        await gateway.reload_directory()
        assert threads
        assert threading.get_ident() not in threads
        assert "dev-new" in gateway.directory.devices


def test_the_pacing_bucket_and_when_a_bucket_may_be_forgotten() -> None:
    bucket = TokenBucket.full(10.0, 2, 0.0)
    assert [bucket.wait_s(0.0), bucket.wait_s(0.0)] == [0.0, 0.0]
    assert bucket.wait_s(0.0) == pytest.approx(0.1)  # taken in advance: act on it in 0.1 s
    assert bucket.wait_s(0.0) == pytest.approx(0.2)
    assert bucket.wait_s(0.5) == pytest.approx(0.0)  # the debt (2 tokens) paid back by 0.5 s of rate
    assert not bucket.refilled(0.5)
    assert bucket.refilled(0.7)
    assert bucket.wait_s(0.7, cost=3.0) == pytest.approx(0.1)  # full (2), 3 taken at once (bytes): 1 owed
