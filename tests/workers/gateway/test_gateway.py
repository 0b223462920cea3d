"""The gateway over real WebSocket + TLS 1.3 sessions, with stand-ins for its Kafka clients (the broker
tests are ``test_gateway_kafka.py``): every refusal reason at authentication, including a signature
replayed from another session; every rejection reason of an envelope; malformed frames after auth that
stop neither the session nor the gateway; replies routed only to their device, held while it is away
and redelivered when it returns; one session per device; the reconnect property (injected disconnects
during traffic lose and duplicate nothing at a deduping device); time, catalogue and artifacts."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
from pathlib import Path

import msgpack
import pytest
from typer.testing import CliRunner
from websockets.exceptions import ConnectionClosed

from edgestream.cli import app
from edgestream.device.transport import (
    Accepted,
    Connected,
    Disconnected,
    Rejected,
    Reply,
    TransportUnavailable,
)
from edgestream.pipeline.contract.envelope import new_request_id
from edgestream.pipeline.contract.fallbacks import FALLBACKS_HEADER
from edgestream.pipeline.contract.gatewayauth import derive_auth_key as auth_key
from edgestream.pipeline.contract.gatewayauth import (
    read_directory,
    sign_transcript,
    transcript,
    verify_transcript,
)
from edgestream.pipeline.contract.gatewayframes import encode_frame
from edgestream.pipeline.observability.catalogue import METRICS_GATEWAY
from edgestream.pipeline.registry.artifacts import LocalArtifactStore
from edgestream.pipeline.registry.artifactserver import ArtifactServer
from edgestream.pipeline.security import keyfile
from edgestream.pipeline.security.identities import Identity
from edgestream.pipeline.security.pki import Pki
from edgestream.pipeline.security.tls import server_context
from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.gateway.mailbox import Mailboxes, TokenBucket
from tests.pipeline.observability.served import http_get

from ..conftest import eventually
from .harness import (
    DEVICES,
    REGION,
    DedupingDevice,
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

DISCONNECTS = 120
"""Disconnects injected in the reconnect test."""


# -- authentication ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device_id", "key", "key_id", "reason"),
    [
        ("dev-0", device_key("someone else"), 1, "bad_signature"),
        ("dev-9", device_key("dev-9"), 1, "unknown_device"),
        ("dev-0", DEVICES["dev-0"], 2, "unknown_device"),
    ],
)
async def test_a_device_that_cannot_prove_its_key_is_refused(
    home: GatewayHome, device_id: str, key: bytes, key_id: int, reason: str
) -> None:
    async with fake_gateway(home) as (gateway, _, _):
        t = transport(home, gateway, device_id, key, key_id)
        with pytest.raises(TransportUnavailable) as caught:
            await t.connect(10)
        assert caught.value.reason == f"refused:{reason}"
        assert not t.connected
        assert gateway.metrics.refused[reason]._value.get() == 1
        assert gateway.sessions == {}


async def test_a_signature_replayed_from_another_session_is_refused(home: GatewayHome) -> None:
    async with fake_gateway(home) as (gateway, _, _):
        ws, nonce, cert = await raw_client(home, gateway)
        stolen = signed_auth("dev-0", DEVICES["dev-0"], nonce, cert)
        await ws.send(stolen)
        assert (await answer(ws))["t"] == "welcome"
        await ws.close()
        replay, _, _ = await raw_client(home, gateway)  # a fresh nonce: the old signature is not over it
        await replay.send(stolen)
        refused = await answer(replay)
        assert (refused["t"], refused["reason"]) == ("refused", "bad_signature")


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"\xc1garbage", "bad_frame"),
        (encode_frame("env", body=b"x"), "bad_frame"),
        (encode_frame("auth", device="u\u0308", key_id=1, nonce=b"n" * 32, sig=b"s" * 64), "bad_device_id"),
        (encode_frame("auth", device="a\x00b", key_id=1, nonce=b"n" * 32, sig=b"s" * 64), "bad_device_id"),
        (encode_frame("auth", device="dev-0", key_id=1, nonce=b"short", sig=b"s" * 64), "bad_frame"),
    ],
)
async def test_a_malformed_auth_is_refused_with_its_reason(
    home: GatewayHome, frame: bytes, reason: str
) -> None:
    async with fake_gateway(home) as (gateway, _, _):
        ws, _, _ = await raw_client(home, gateway)
        await ws.send(frame)
        refused = await answer(ws)
        assert (refused["t"], refused["reason"]) == ("refused", reason)


async def test_no_auth_in_time_is_refused_and_the_pending_cap_refuses_more_connections(
    home: GatewayHome,
) -> None:
    async with fake_gateway(home, auth_timeout_s=0.3, max_pending=1) as (gateway, _, _):
        ws, _, _ = await raw_client(home, gateway)
        second = transport(home, gateway, "dev-1")
        with pytest.raises(TransportUnavailable, match="refused:overloaded"):
            await second.connect(10)
        refused = await answer(ws)
        assert (refused["t"], refused["reason"]) == ("refused", "auth_timeout")
        assert await eventually(lambda: gateway.pending == 0, timeout_s=10)
        await second.connect(10)  # the slot is free again once the first was refused
        await second.close()


# -- envelopes ---------------------------------------------------------------------------------------


async def test_an_envelope_is_produced_keyed_by_device_and_accepted(home: GatewayHome) -> None:
    async with fake_gateway(home) as (gateway, producer, _):
        t = transport(home, gateway)
        await t.connect(10)
        rid = new_request_id()
        body = envelope("dev-0", DEVICES["dev-0"], rid=rid, kind="frame")
        await t.send("frame", body, fallbacks=3)
        accepted = await next_event(t, Accepted)
        assert accepted == Accepted(rid)
        [produced] = producer.sent
        assert (produced.topic, produced.key, produced.value) == (
            f"edge.{REGION}.ingest.frame",
            b"dev-0",
            body,
        )
        assert produced.headers == [(FALLBACKS_HEADER, b"3")]
        await t.report(msgpack.packb({"kind": "agreement"}))
        await t.sync_clock()  # one round trip: the report was handled before
        assert producer.sent[-1].topic == f"edge.{REGION}.reports"
        await t.close()


async def test_every_rejection_reason_and_the_session_survives_malformed_frames(home: GatewayHome) -> None:
    async with fake_gateway(home, burst=2, rate_per_s=0.001, max_envelope_bytes=4096) as (
        gateway,
        producer,
        _,
    ):
        t = transport(home, gateway)
        await t.connect(10)
        ws = t._ws
        assert ws is not None
        other = envelope("dev-1", DEVICES["dev-1"])
        cases = [
            (other, "device_mismatch"),
            (b"\x00" * 5000, "too_large"),
            (b"\x81\xa1v\x01", "undecodable"),
        ]
        for body, reason in cases:
            await t.send("embedding", body)
            rejected = await next_event(t, Rejected)
            assert isinstance(rejected, Rejected)
            assert rejected.reason == reason
        for garbage in (
            b"\xc1",
            encode_frame("nope"),
            encode_frame("env", body=1),
            encode_frame("ack", ids=[b"x"]),
            "text",
        ):
            await ws.send(garbage)
            rejected = await next_event(t, Rejected)
            assert isinstance(rejected, Rejected)
            assert (rejected.request_id, rejected.reason) == (
                None,
                "bad_frame",
            )
        await ws.send(encode_frame("report", body=b"x" * (64 * 1024 + 1)))
        rejected = await next_event(t, Rejected)
        assert isinstance(rejected, Rejected)
        assert rejected.reason == "too_large"
        rids = [new_request_id() for _ in range(3)]
        for rid in rids:
            await t.send("embedding", envelope("dev-0", DEVICES["dev-0"], rid=rid))
        got = [await next_event(t, Accepted | Rejected) for _ in rids]  # acks come after the producer's
        assert Accepted(rids[0]) in got
        assert Accepted(rids[1]) in got
        [limited] = [e for e in got if isinstance(e, Rejected)]
        assert (limited.request_id, limited.reason) == (rids[2], "rate_limited")
        producer.fail = True
        gateway.sessions["dev-0"].bucket.tokens = 5
        await t.send("embedding", envelope("dev-0", DEVICES["dev-0"]))
        rejected = await next_event(t, Rejected)
        assert isinstance(rejected, Rejected)
        assert rejected.reason == "unavailable"
        assert t.connected
        assert len(producer.sent) == 2
        await t.close()


# -- replies -----------------------------------------------------------------------------------------


async def test_replies_reach_only_their_device_and_are_redelivered_until_acked(home: GatewayHome) -> None:
    async with fake_gateway(home) as (gateway, _, replies):
        a, b = transport(home, gateway, "dev-0"), transport(home, gateway, "dev-1")
        await a.connect(10)
        await b.connect(10)
        rid_a, rid_b = new_request_id(), new_request_id()
        replies.push("dev-0", sealed_reply("dev-0", rid_a))
        replies.push("dev-1", sealed_reply("dev-1", rid_b))
        assert (await next_event(a, Reply)).request_id == rid_a
        assert (await next_event(b, Reply)).request_id == rid_b
        await b.ack([rid_b])
        await b.sync_clock()
        await a.close()
        await b.close()
        held = new_request_id()
        replies.push("dev-0", sealed_reply("dev-0", held))  # while dev-0 is away
        await asyncio.sleep(0.2)
        a2, b2 = transport(home, gateway, "dev-0"), transport(home, gateway, "dev-1")
        await a2.connect(10)
        await b2.connect(10)
        connected = await next_event(a2, Connected)
        assert isinstance(connected, Connected)
        assert connected.redelivered == 2
        got = {(await next_event(a2, Reply)).request_id for _ in range(2)}
        assert got == {rid_a, held}
        connected = await next_event(b2, Connected)
        assert isinstance(connected, Connected)
        assert connected.redelivered == 0
        await b2.sync_clock()
        assert b2.events.empty()
        await a2.close()
        await b2.close()


async def test_a_newer_session_replaces_the_older(home: GatewayHome) -> None:
    async with fake_gateway(home) as (gateway, _, replies):
        first, second = transport(home, gateway), transport(home, gateway)
        await first.connect(10)
        await second.connect(10)
        dropped = await next_event(first, Disconnected)
        assert dropped == Disconnected(REGION, "replaced")
        rid = new_request_id()
        replies.push("dev-0", sealed_reply("dev-0", rid))
        assert (await next_event(second, Reply)).request_id == rid
        assert not first.connected
        assert gateway.sessions["dev-0"] is not None
        await first.close()
        await second.close()


async def test_injected_disconnects_during_traffic_lose_and_duplicate_nothing(home: GatewayHome) -> None:
    """The reconnect property at suite scale (the bench runs 1,000 disconnects)."""
    async with fake_gateway(home) as (gateway, _, replies):
        t = transport(home, gateway)
        await t.connect(10)
        device = DedupingDevice(t)
        drain = asyncio.create_task(device.drain())
        sent: list[bytes] = []
        for _ in range(DISCONNECTS):
            for n in range(10):  # traffic, before and while the connection drops
                rid = new_request_id()
                sent.append(rid)
                replies.push("dev-0", sealed_reply("dev-0", rid))
                if n == 6:
                    await t.drop()
                await asyncio.sleep(0)
            async with asyncio.timeout(30):
                while not t.connected:  # noqa: ASYNC110 - the transport reconnects on its own
                    await asyncio.sleep(0.005)
        async with asyncio.timeout(60):
            while len(device.first) < len(sent):  # noqa: ASYNC110 - the device's drain task fills it
                await asyncio.sleep(0.05)
        drain.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drain
        assert t.sessions == DISCONNECTS + 1
        assert set(device.first) == set(sent)  # nothing lost
        assert all(device.first[rid][2:18] == rid for rid in sent)  # each its own reply
        redelivered = sum(e.redelivered for e in device.events if isinstance(e, Connected))
        assert redelivered > 0  # replies held while it was away came back (the property was exercised)
        await t.close()


# -- time, catalogue, artifacts -----------------------------------------------------------------------


async def test_time_catalogue_and_only_the_artifacts_it_names(home: GatewayHome) -> None:
    store = LocalArtifactStore(home.home / "registry" / "artifacts")
    named, unnamed = store.put(b"tiny model"), store.put(b"not in the catalogue")
    catalogue = json.dumps(
        {"catalogue": {"models": [{"sha256": named}]}, "key_id": "k", "signature": ""}
    ).encode()
    async with fake_gateway(home) as (gateway, _, _):
        t = transport(home, gateway)
        await t.connect(10)
        with pytest.raises(TransportUnavailable, match="not_found"):
            await t.fetch_catalogue()
        (home.home / "registry" / "device-catalogue.json").write_bytes(catalogue)
        assert await t.fetch_catalogue() == catalogue
        assert await t.fetch_artifact(named) == b"tiny model"
        with pytest.raises(TransportUnavailable, match="not_found"):
            await t.fetch_artifact(unnamed)
        sample = await t.sync_clock()
        assert abs(sample.offset_ms) < 5_000
        assert sample.rtt_ms >= 0
        await t.close()


async def test_a_gateway_on_another_host_hands_devices_artifacts_from_the_artifact_server(
    home: GatewayHome, tmp_path: Path
) -> None:
    """No artifact store on the gateway's disk: what the catalogue names comes from ``registry serve``
    over mutual TLS (as the gateway's identity), verified and cached; a device sees no difference."""
    registry = LocalArtifactStore(tmp_path / "registry-host" / "artifacts")
    named = registry.put(b"tiny model, served from elsewhere")
    catalogue = json.dumps({"catalogue": {"models": [{"sha256": named}]}, "key_id": "k", "signature": ""})
    (home.home / "registry").mkdir(exist_ok=True)
    (home.home / "registry" / "device-catalogue.json").write_text(catalogue)
    pki = Pki.in_home(home.home)
    server_files = pki.ensure([Identity.registry()])[Identity.registry()]
    kafka = KafkaSettings.tls("127.0.0.1:9", pki.ensure([Identity.gateway(REGION)])[Identity.gateway(REGION)])
    async with ArtifactServer(registry, server_context(server_files)) as server:
        url = f"https://localhost:{server.port}"
        async with fake_gateway(home, kafka=kafka, registry_url=url) as (gateway, _, _):
            t = transport(home, gateway)
            await t.connect(10)
            assert await t.fetch_artifact(named) == b"tiny model, served from elsewhere"
            await t.close()
    assert not (home.home / "registry" / "artifacts").exists()  # never read from this disk
    assert (home.home / "gateway" / REGION / "artifacts" / "sha256" / named[:2] / named).is_file()


# -- pieces --------------------------------------------------------------------------------------------


def test_mailboxes_hold_drop_the_oldest_ack_and_expire() -> None:
    boxes = Mailboxes(hold_s=10, hold_max=2)
    boxes.put("d", b"1", b"f1", now=0)
    boxes.put("d", b"2", b"f2", now=1)
    boxes.put("d", b"3", b"f3", now=2)
    assert boxes.held("d", now=3) == [b"f2", b"f3"]
    assert boxes.counts.dropped == 1
    boxes.ack("d", [b"2"])
    assert boxes.held("d", now=3) == [b"f3"]
    assert boxes.expire(now=11.5) == 0  # f1 dropped, f2 acked: nothing of theirs left
    assert boxes.expire(now=12) == 1
    assert boxes.held("d", now=12) == []
    assert boxes.devices == 0


def test_the_token_bucket() -> None:
    bucket = TokenBucket.full(rate=1, burst=2, now=0)
    assert [bucket.take(0), bucket.take(0), bucket.take(0)] == [True, True, False]
    assert bucket.take(1.0)
    assert not bucket.take(1.0)


def test_the_directory_command_writes_public_keys_of_named_and_enrolled_devices(tmp_path: Path) -> None:
    key_file = tmp_path / "keys.json"
    ring = keyfile.create(key_file, [REGION])
    keyfile.enroll_devices(key_file, REGION, ["enrolled-1"], key_id=ring.current_key_id(REGION))
    ring = keyfile.load(key_file)
    ids = tmp_path / "ids.txt"
    ids.write_text("listed-1\n\n")
    out = tmp_path / "directory.json"
    result = CliRunner().invoke(
        app,
        [
            "gateway",
            "directory",
            "-r",
            REGION,
            "--devices",
            "2",
            "--ids",
            str(ids),
            "--key-file",
            str(key_file),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    directory = read_directory(out, REGION)
    assert set(directory.devices) == {f"dev-{REGION}-00000", f"dev-{REGION}-00001", "listed-1", "enrolled-1"}
    kid = ring.current_key_id(REGION)
    data = transcript(
        region=REGION,
        cert_sha256=bytes(32),
        server_nonce=bytes(32),
        client_nonce=bytes(32),
        device_id="enrolled-1",
        key_id=kid,
    )
    signature = sign_transcript(auth_key(ring.device_key(REGION, "enrolled-1", kid)), data)
    verify_transcript(directory.public_key("enrolled-1", kid), signature, data)
    secret = ring.device_key(REGION, "enrolled-1", kid)
    assert base64.b64encode(secret).decode() not in out.read_text()  # public halves only


async def test_hostile_frames_after_auth_stop_neither_the_session_nor_the_gateway(home: GatewayHome) -> None:
    rng = random.Random(16)
    async with fake_gateway(home) as (gateway, producer, _):
        hostile, honest = transport(home, gateway, "dev-0"), transport(home, gateway, "dev-1")
        await hostile.connect(10)
        await honest.connect(10)
        ws = hostile._ws
        assert ws is not None
        frames = [rng.randbytes(rng.randrange(0, 300)) for _ in range(150)]
        frames += [
            encode_frame(rng.choice(["env", "ack", "get", "time", "report"]), **{"body": 7})
            for _ in range(50)
        ]
        frames += [msgpack.packb([[[[]]]] * 50), msgpack.packb({"t": "env", "body": b"\xff" * 100, "fb": -1})]
        for frame in frames:
            await ws.send(frame)
        await hostile.sync_clock()  # every frame before it was handled, and the session still answers
        await honest.send("embedding", envelope("dev-1", DEVICES["dev-1"]))
        assert isinstance(await next_event(honest, Accepted), Accepted)
        assert hostile.connected
        assert gateway.sessions.keys() == {"dev-0", "dev-1"}
        assert len(producer.sent) == 1  # nothing hostile reached Kafka
        await hostile.close()
        await honest.close()


async def test_a_first_frame_larger_than_an_auth_frame_closes_its_connection_and_no_other(
    home: GatewayHome,
) -> None:
    """Anyone may connect: before authentication a message may be no larger than an auth frame (a 2 MiB
    frame of empty maps cost the loop up to 0.9 s). The connection closes (1009); a device connects."""
    async with fake_gateway(home) as (gateway, _, _):
        ws, _, _ = await raw_client(home, gateway)
        await ws.send(b"\x82\xa1t\xa4auth\xa1x\xdd" + (1 << 20).to_bytes(4, "big") + b"\x80" * (1 << 20))
        with pytest.raises(ConnectionClosed) as closed:
            await answer(ws)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009
        honest = transport(home, gateway, "dev-1")
        await honest.connect(10)
        await honest.send("embedding", envelope("dev-1", DEVICES["dev-1"]))
        assert isinstance(await next_event(honest, Accepted), Accepted)
        await honest.close()


async def test_a_second_get_while_the_first_answer_waits_to_be_sent_is_rejected(home: GatewayHome) -> None:
    """Each answer to a ``get`` is a new copy of the file, queued whole: a device that asks again before
    reading the answer is told to wait (60 asks of a 4 MiB file held 228 MiB), and the session goes on."""
    store = LocalArtifactStore(home.home / "registry" / "artifacts")
    named = store.put(bytes(4 << 20))
    catalogue = json.dumps({"catalogue": {"models": [{"sha256": named}]}, "key_id": "k", "signature": ""})
    (home.home / "registry" / "device-catalogue.json").write_bytes(catalogue.encode())
    async with fake_gateway(home) as (gateway, _, _):
        ws, nonce, cert = await raw_client(home, gateway, max_size=8 << 20)
        await ws.send(signed_auth("dev-0", DEVICES["dev-0"], nonce, cert))
        assert (await answer(ws))["t"] == "welcome"
        session = gateway.sessions["dev-0"]
        # The socket does not take the answer yet (a device that does not read, its buffers full).
        gate, sent = asyncio.Event(), session.ws.send

        async def held(frame: bytes) -> None:
            await gate.wait()
            await sent(frame)

        session.ws.send = held  # type: ignore[method-assign,assignment]
        ask = encode_frame("get", what="artifact", sha256=named)
        await ws.send(ask)
        assert await eventually(lambda: session.queued_bytes > 4 << 20, timeout_s=10)
        for _ in range(5):
            await ws.send(ask)
        assert await eventually(lambda: session.outbox.qsize() >= 5, timeout_s=10)
        assert session.queued_bytes < 2 * (4 << 20), "no second copy was queued"
        gate.set()
        frames = [await answer(ws) for _ in range(6)]
        assert [f["t"] for f in frames].count("artifact") == 1
        assert [f.get("reason") for f in frames if f["t"] == "rejected"] == ["bad_frame"] * 5
        assert "one get at a time" in frames[-1]["detail"]
        await ws.close()


async def test_a_rewritten_directory_is_picked_up_and_a_broken_one_ignored(home: GatewayHome) -> None:
    async with fake_gateway(home) as (gateway, _, _):
        newcomer = transport(home, gateway, "dev-new", device_key("dev-new"))
        with pytest.raises(TransportUnavailable, match="unknown_device"):
            await newcomer.connect(10)
        home.enrol({**DEVICES, "dev-new": device_key("dev-new")})
        await gateway.reload_directory()
        await newcomer.connect(10)
        path = home.home / "gateway" / REGION / "directory.json"
        path.write_text("{not json")
        await gateway.reload_directory()  # logged, the previous directory kept
        assert "dev-new" in gateway.directory.devices
        await newcomer.close()


async def test_readyz_and_metrics_count_refusals_envelopes_and_replies(home: GatewayHome) -> None:
    async with fake_gateway(home, health_port=0) as (gateway, _, replies):
        port = gateway.health_port
        assert port is not None
        assert await http_get(port, "/readyz") == (200, "ok\n")
        stranger = transport(home, gateway, "dev-9", device_key("dev-9"))
        with pytest.raises(TransportUnavailable):
            await stranger.connect(10)
        t = transport(home, gateway)
        await t.connect(10)
        await t.send("embedding", envelope("dev-0", DEVICES["dev-0"]))
        await next_event(t, Accepted)
        replies.push("dev-0", sealed_reply("dev-0", new_request_id()))
        replies.push("dev-1", sealed_reply("dev-1", new_request_id()))  # away: held
        await next_event(t, Reply)
        status, text = await http_get(port, "/metrics")
        assert status == 200
        node, region = f'node="{gateway.node}"', f'region="{REGION}"'  # labels come sorted by name
        for line in (
            f'edgestream_gateway_auth_refusals_total{{{node},reason="unknown_device",{region}}} 1.0',
            f'edgestream_gateway_envelopes_total{{{node},outcome="accepted",{region}}} 1.0',
            f'edgestream_gateway_replies_total{{{node},outcome="routed",{region}}} 1.0',
            f"edgestream_gateway_sessions{{{node},{region}}} 1.0",
            f"edgestream_ready{{{node},{region}}} 1.0",
        ):
            assert line in text, line
        served = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")}
        assert set(METRICS_GATEWAY) <= served  # every name the catalogue says a gateway serves
        await t.close()
