"""One device connection: the hello, the device's auth, then its frames until it leaves.

Everything a session sends goes through its **outbox** (a queue drained by one writer task), so the
reply consumer and the producer's acknowledgements never wait on a device's socket: a device that stops
reading fills its outbox and is disconnected (its replies stay held for its next session). The order of
the outbox is the order of events on the gateway's one event loop, so the welcome precedes the held
replies, and those precede replies read after the session was registered.

Nothing a device sends can stop the gateway: every frame is decoded by ``gatewayframes`` (which raises
only `BadFrame`), an envelope's header by the contract's decoder, and each failure becomes a
``rejected`` frame or, before authentication, a ``refused`` one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from websockets.exceptions import ConnectionClosed

from edgestream.pipeline.contract.envelope import decode_envelope
from edgestream.pipeline.contract.fallbacks import fallbacks_header
from edgestream.pipeline.contract.gatewayauth import GatewayAuthError, transcript, verify_transcript
from edgestream.pipeline.contract.gatewayframes import (
    MAX_REPORT_BYTES,
    SESSION_ID_BYTES,
    Env,
    Get,
    decode_frame,
    detail,
    encode_frame,
    parse_ack,
    parse_auth,
    parse_env,
    parse_get,
)
from edgestream.pipeline.errors import BadDeviceId, ContractError, OversizedEnvelope
from edgestream.pipeline.observability.traceparent import TRACEPARENT
from edgestream.workers.gateway.mailbox import TokenBucket

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection

    from edgestream.workers.gateway.server import Gateway

log = logging.getLogger(__name__)

REPLACED: Final = 4409
"""Close code of a session another session of the same device replaced."""
REFUSED: Final = 4401
"""Close code after a ``refused`` frame."""
SLOW: Final = 4408
"""Close code of a device whose outbox overflowed (it stopped reading)."""
AUTH_FRAME_MAX_BYTES: Final = 4096
"""Largest message read before authentication (an auth frame is a few hundred bytes); a larger one
closes the connection (1009). Before, a 2 MiB first frame of empty msgpack maps cost the gateway's
loop up to 0.9 s, from anyone who could connect (2026-12-07)."""
GET_AFTER_BYTES: Final = 1024 * 1024
"""A ``get`` is refused while more than this waits in the session's outbox (the previous answer)."""
REFUSE_TIMEOUT_S: Final = 5.0
"""How long a refusal may take to send and close before the connection is cut."""
_ENCODE_ACCEPTED: Final = partial(encode_frame, "accepted")


class Session:
    """An authenticated device's connection."""

    __slots__ = (
        "bucket",
        "bytes",
        "closing",
        "device_id",
        "fetching",
        "frames",
        "gateway",
        "outbox",
        "queued_bytes",
        "session_id",
        "writer",
        "ws",
    )

    def __init__(self, gateway: Gateway, ws: ServerConnection, device_id: str) -> None:
        self.gateway = gateway
        self.ws = ws
        self.device_id = device_id
        """The authenticated device."""
        self.session_id = os.urandom(SESSION_ID_BYTES)
        """Names the session in the welcome."""
        self.outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        """Frames to send, in order; None ends the writer."""
        self.queued_bytes = 0
        """Bytes of the frames in the outbox (and the one being written)."""
        settings = gateway.settings
        self.bucket = gateway.device_bucket(device_id)
        """The device's envelope and report rate (the gateway's, shared with its other sessions)."""
        self.frames = TokenBucket.full(settings.frames_per_s, settings.frame_burst, time.monotonic())
        """The session's frame rate, which paces its reading."""
        self.bytes = TokenBucket.full(settings.bytes_per_s, settings.byte_burst, time.monotonic())
        """The session's byte rate, which paces its reading too."""
        self.closing = False
        """`close` was called (replaced, or too slow): nothing more is sent, no further frame handled."""
        self.writer: asyncio.Task[None] | None = None
        self.fetching = False
        """A ``get`` is being answered (one at a time per session: files are read in threads)."""

    def send(self, frame: bytes) -> None:
        """Queue ``frame``; a device whose outbox is full (``max_outbox`` frames, or past
        ``max_outbox_bytes`` with a frame already queued) is disconnected instead."""
        if self.closing:  # replaced or disconnected: its replies stay held for the next session
            return
        settings = self.gateway.settings
        if self.outbox.qsize() >= settings.max_outbox or (
            self.queued_bytes and self.queued_bytes + len(frame) > settings.max_outbox_bytes
        ):
            log.info("device %r stopped reading: disconnecting it", self.device_id)
            self.close(SLOW, "slow")
            return
        self.queued_bytes += len(frame)
        self.outbox.put_nowait(frame)

    def close(self, code: int, reason: str) -> None:
        """Close the connection (without waiting), once: a session that overflowed spawned another close
        task and log line for each further answer until its close timed out."""
        if self.closing:
            return
        self.closing = True
        self.outbox.put_nowait(None)
        self.gateway.spawn(self.ws.close(code, reason))

    async def write(self) -> None:
        """Drain the outbox into the socket until None or the connection ends."""
        with contextlib.suppress(ConnectionClosed):
            while (frame := await self.outbox.get()) is not None:
                try:
                    await self.ws.send(frame)
                finally:
                    self.queued_bytes -= len(frame)

    def reject(self, request_id: bytes | None, reason: str, text: str) -> None:
        """Send ``rejected`` and count it."""
        self.gateway.metrics.envelopes[reason].inc()
        self.send(encode_frame("rejected", id=request_id, reason=reason, detail=detail(text)))

    async def read(self) -> None:
        """Handle the device's frames until the connection ends, paced at ``frames_per_s`` and
        ``bytes_per_s``; a closing session reads no further frame (a replaced session kept producing
        for the ~10 s its close took, on a bucket of its own, so reconnecting multiplied a device's
        rate)."""
        frames, size = self.frames, self.bytes
        async for raw in self.ws:
            now = time.monotonic()
            if not self.closing and (wait_s := max(frames.wait_s(now), size.wait_s(now, len(raw)))) > 0.0:
                await asyncio.sleep(wait_s)  # not reading meanwhile: websockets stops, TCP pushes back
            if self.closing:  # stop reading: the close completes or times out without us
                break
            await self.on_frame(raw)

    async def on_frame(self, raw: Any) -> None:
        """Handle one frame after authentication."""
        try:
            frame = decode_frame(raw)
            kind = frame["t"]
            if kind == "env":
                await self.on_envelope(parse_env(frame))
            elif kind == "ack":
                self.gateway.mailboxes.ack(self.device_id, parse_ack(frame))
            elif kind == "time":
                echo = frame.get("echo")
                echo = echo if type(echo) is int and -(2**63) <= echo < 2**63 else 0
                self.send(encode_frame("time", now_ms=time.time_ns() // 1_000_000, echo=echo))
            elif kind == "report":
                await self.on_report(frame)
            elif kind == "get":
                self.on_get(parse_get(frame))
            else:
                raise GatewayAuthError(f"unknown frame type {kind[:32]!r}")
        except GatewayAuthError as err:
            self.reject(None, "bad_frame", str(err))

    async def on_envelope(self, env: Env) -> None:
        """Check an envelope's header and hand it to the producer."""
        gateway = self.gateway
        settings = gateway.settings
        if len(env.body) > settings.max_envelope_bytes:
            self.reject(None, "too_large", f"an envelope is at most {settings.max_envelope_bytes} bytes")
            return
        try:
            envelope = decode_envelope(env.body, max_envelope_bytes=settings.max_envelope_bytes)
        except OversizedEnvelope as err:
            self.reject(None, "too_large", str(err))
            return
        except BadDeviceId:
            self.reject(None, "device_mismatch", "the envelope's device id is not the session's")
            return
        except ContractError as err:
            self.reject(None, "undecodable", str(err))
            return
        rid = envelope.request_id
        if envelope.device_id != self.device_id:
            self.reject(rid, "device_mismatch", "the envelope's device id is not the session's")
            return
        if not self.bucket.take(time.monotonic()):
            self.reject(rid, "rate_limited", f"over {settings.rate_per_s:g} envelopes a second")
            return
        headers: list[tuple[str, bytes]] = []
        if env.fallbacks >= 1:
            headers.append(fallbacks_header(env.fallbacks))
        if env.traceparent is not None:
            headers.append((TRACEPARENT, env.traceparent.encode("ascii")))
        topic = gateway.ingest_topics[envelope.kind]
        try:  # waits only while the producer's buffer is full: back-pressure on this device's reads
            future = await gateway.producer.send(
                topic, env.body, key=self.device_id.encode(), headers=headers
            )
        except Exception as err:  # the producer's failures (broker down, timeouts) are the device's news
            self.unavailable(rid, err)
            return
        future.add_done_callback(partial(self.produced, rid))

    def produced(self, rid: bytes, future: asyncio.Future[Any]) -> None:
        """The broker acked the envelope (``accepted``), or the producer gave up (``unavailable``)."""
        err = None if future.cancelled() else future.exception()
        if future.cancelled() or err is not None:
            self.unavailable(rid, err)
            return
        self.gateway.metrics.envelopes["accepted"].inc()
        self.send(_ENCODE_ACCEPTED(id=rid))

    def unavailable(self, rid: bytes, err: BaseException | None) -> None:
        """Reject an envelope the producer could not deliver."""
        log.warning("could not produce an envelope of %r: %s", self.device_id, err)
        self.reject(rid, "unavailable", f"the gateway could not deliver it: {type(err).__name__}")

    def on_get(self, get: Get) -> None:
        """Answer a ``get`` in the background, one at a time."""
        if self.fetching or self.queued_bytes > GET_AFTER_BYTES:
            # Until the previous answer has left: each answer is a new copy of the file, queued whole.
            raise GatewayAuthError("one get at a time: wait for the answer to the previous one")
        self.fetching = True

        async def answer() -> None:
            try:
                await self.gateway.files.answer(self, get)
            finally:
                self.fetching = False

        self.gateway.spawn(answer())

    async def on_report(self, frame: dict[str, Any]) -> None:
        """Produce one device report, verbatim, keyed by the device (waiting, as an envelope does, only
        while the producer's buffer is full)."""
        body = frame.get("body")
        if not isinstance(body, bytes):
            raise GatewayAuthError("body must be bin")
        if len(body) > MAX_REPORT_BYTES:
            self.reject(None, "too_large", f"a report is at most {MAX_REPORT_BYTES} bytes")
            return
        if not self.bucket.take(time.monotonic()):  # reports share the session's rate with envelopes
            self.reject(None, "rate_limited", "over the session's rate")
            return
        await self.gateway.produce_report(self.device_id, body)


async def authenticate(gateway: Gateway, ws: ServerConnection) -> str | None:
    """Send the hello, read and verify the auth; the device id, or None after a ``refused``."""
    nonce = os.urandom(32)
    settings = gateway.settings
    hello = encode_frame(
        "hello",
        v=1,
        region=settings.region,
        gateway=gateway.node,
        nonce=nonce,
        now_ms=time.time_ns() // 1_000_000,
    )
    await ws.send(hello)
    # Until the device is known, a message may be only as large as an auth frame (the server reads
    # every connection so, from its first byte: anyone may connect); raised once it is authenticated.
    try:
        raw = await asyncio.wait_for(ws.recv(), settings.auth_timeout_s)
    except TimeoutError:
        await refuse(gateway, ws, "auth_timeout", f"no auth within {settings.auth_timeout_s:g} s")
        return None
    try:
        frame = decode_frame(raw)
        if frame["t"] != "auth":
            raise GatewayAuthError("the first frame must be auth")
        auth = parse_auth(frame)
        data = transcript(
            region=settings.region,
            cert_sha256=gateway.cert_sha256,
            server_nonce=nonce,
            client_nonce=auth.nonce,
            device_id=auth.device_id,
            key_id=auth.key_id,
        )
        verify_transcript(gateway.directory.public_key(auth.device_id, auth.key_id), auth.signature, data)
    except (GatewayAuthError, BadDeviceId) as err:
        await refuse(gateway, ws, err.reason, str(err))
        return None
    ws.protocol.max_message_size = settings.max_frame_bytes
    return auth.device_id


async def refuse(gateway: Gateway, ws: ServerConnection, reason: str, text: str) -> None:
    """Send ``refused`` with ``reason``, count it, and close; a peer that does not read within
    `REFUSE_TIMEOUT_S` is cut off (a client that sent pings without reading held its slot until the
    keepalive ended it, 40 s, instead of the auth timeout)."""
    gateway.metrics.refused[reason].inc()
    try:
        async with asyncio.timeout(REFUSE_TIMEOUT_S):
            with contextlib.suppress(ConnectionClosed):
                await ws.send(encode_frame("refused", reason=reason, detail=detail(text)))
                await ws.close(REFUSED, reason)
    except TimeoutError:
        ws.transport.abort()
