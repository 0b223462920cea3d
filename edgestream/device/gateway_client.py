"""`GatewayTransport`: the `Transport` of ``transport.py`` over WebSocket + TLS 1.3 to a region's gateway.

A session opens with TLS (the gateway's certificate must chain to the endpoint's CA file and name its
host), then the gateway's ``hello`` and the device's ``auth``: an Ed25519 signature, under a key derived
from the device key alone, of a transcript binding the region, the SHA-256 of the certificate this
connection saw, both nonces, the device id and key id (``pipeline/contract/gatewayauth.py``). Once up,
the transport keeps it up: when the connection drops it reconnects by itself, with jittered
exponential back-off, until `close` (or until another session of the same device replaces it).

What arrives goes to `events` in order. The transport does not deduplicate replies: after a reconnect
the gateway redelivers every reply not yet acked, so the SDK acks what it got and keeps the first copy
of each request id. Requests that have an answer frame (time, catalogue, artifacts) are one at a time
per kind and fail with `TransportUnavailable` when the session drops under them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import ssl
import time
from typing import Any, Final

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

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
from edgestream.pipeline.contract.gatewayauth import (
    NONCE_BYTES,
    GatewayAuthError,
    derive_auth_key,
    sign_transcript,
    transcript,
)
from edgestream.pipeline.contract.gatewayframes import (
    Auth,
    auth_frame,
    decode_frame,
    encode_frame,
    get_bytes,
    parse_hello,
)

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
"""Largest message read from the gateway (a model artifact)."""
REPLACED_CODE: Final = 4409
"""The close code of a session another session of this device replaced."""
_WHAT: Final = {"catalogue": "catalogue", "artifact": "artifact", "not_found": "artifact"}


def client_context(ca_file: str) -> ssl.SSLContext:
    """TLS 1.3 only; the gateway must chain to ``ca_file`` and match the host name it was reached by."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


class GatewayTransport:
    """One region's session with its gateway, kept up until closed."""

    def __init__(
        self,
        endpoint: RegionEndpoint,
        device_id: str,
        device_key: bytes,
        key_id: int,
        *,
        backoff_min_s: float = 0.1,
        backoff_max_s: float = 10.0,
    ) -> None:
        self.endpoint = endpoint
        """Where the gateway is and how to trust it."""
        self.device_id = device_id
        self.key_id = key_id
        self.backoff_min_s = backoff_min_s
        """First wait before a reconnect."""
        self.backoff_max_s = backoff_max_s
        """Longest wait between reconnects."""
        self._auth_key = derive_auth_key(device_key)
        self._ssl: ssl.SSLContext | None = None
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._ws: ClientConnection | None = None
        self._closed = False
        self._supervisor: asyncio.Task[None] | None = None
        self._clock: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._echo = 0
        self._fetch_lock = asyncio.Lock()
        self._fetch: asyncio.Future[dict[str, Any]] | None = None
        self.sessions = 0
        """Sessions established so far (the first and every reconnect)."""

    @property
    def region(self) -> str:
        """The region this transport reaches."""
        return self.endpoint.region

    @property
    def connected(self) -> bool:
        """Whether a session is up now."""
        return self._ws is not None

    @property
    def events(self) -> asyncio.Queue[Event]:
        """Every event in arrival order."""
        return self._events

    async def connect(self, timeout_s: float) -> None:
        """Open a session (TLS, hello, auth, welcome) and keep it up from then on."""
        if self._closed:
            raise TransportUnavailable(self.region, "closed", "the transport was closed")
        if self._ws is not None:
            return
        ws = await self._open(timeout_s)
        self._attach(ws)

    async def close(self) -> None:
        """End the session and stop reconnecting. Idempotent."""
        self._closed = True
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None

    async def drop(self) -> None:
        """Close the connection without closing the transport (it reconnects): for tests and fault
        injection."""
        ws = self._ws
        if ws is not None:
            await ws.close()

    async def send(self, kind: str, envelope: bytes, *, fallbacks: int = 0) -> None:
        """Hand one sealed envelope to the gateway (``kind`` is read from its header there)."""
        del kind
        fields: dict[str, object] = {"body": envelope}
        if fallbacks >= 1:
            fields["fb"] = fallbacks
        await self._send(encode_frame("env", **fields))

    async def ack(self, request_ids: list[bytes]) -> None:
        """Tell the gateway these replies arrived."""
        for start in range(0, len(request_ids), 1024):
            await self._send(encode_frame("ack", ids=request_ids[start : start + 1024]))

    async def report(self, body: bytes) -> None:
        """Send one device report."""
        await self._send(encode_frame("report", body=body))

    async def sync_clock(self) -> ClockSample:
        """One time exchange with the gateway."""
        self._echo += 1
        echo = self._echo
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._clock[echo] = future
        t0, w0 = time.monotonic(), time.time() * 1000.0
        try:
            await self._send(encode_frame("time", echo=echo))
            frame = await future
        finally:
            self._clock.pop(echo, None)
        t1, w1 = time.monotonic(), time.time() * 1000.0
        now_ms = frame.get("now_ms")
        if type(now_ms) is not int:
            raise TransportUnavailable(self.region, "bad_frame", "a time frame without now_ms")
        return ClockSample(offset_ms=now_ms - (w0 + w1) / 2.0, rtt_ms=(t1 - t0) * 1000.0)

    async def fetch_catalogue(self) -> bytes:
        """The region's signed device catalogue, verbatim."""
        frame = await self._get(encode_frame("get", what="catalogue"), "catalogue")
        return get_bytes(frame, "body")

    async def fetch_artifact(self, sha256: str) -> bytes:
        """One artifact the catalogue names (the caller verifies its hash)."""
        frame = await self._get(encode_frame("get", what="artifact", sha256=sha256), "artifact")
        return get_bytes(frame, "body")

    # -- internals ---------------------------------------------------------------------------------------

    async def _get(self, request: bytes, kind: str) -> dict[str, Any]:
        async with self._fetch_lock:
            self._fetch = asyncio.get_running_loop().create_future()
            try:
                await self._send(request)
                frame = await self._fetch
            finally:
                self._fetch = None
        if frame["t"] != kind:
            raise TransportUnavailable(self.region, "not_found", str(frame.get("what", kind))[:200])
        return frame

    async def _send(self, frame: bytes) -> None:
        ws = self._ws
        if ws is None:
            raise TransportUnavailable(self.region, "closed", "no session")
        try:
            await ws.send(frame)
        except ConnectionClosed as err:
            raise TransportUnavailable(self.region, "closed", str(err)) from None

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = client_context(self.endpoint.ca_file)
        return self._ssl

    async def _open(self, timeout_s: float) -> ClientConnection:
        region = self.region
        try:
            async with asyncio.timeout(timeout_s):
                ws = await connect(
                    self.endpoint.url, ssl=self._context(), compression=None, max_size=MAX_MESSAGE_BYTES
                )
                try:
                    await self._authenticate(ws)
                except BaseException:
                    await ws.close()
                    raise
        except TimeoutError:
            raise TransportUnavailable(region, "timeout", f"no session within {timeout_s:g} s") from None
        except ssl.SSLError as err:
            raise TransportUnavailable(region, "tls", str(err)) from None
        except (OSError, InvalidHandshake, InvalidURI, ConnectionClosed) as err:
            raise TransportUnavailable(region, "unreachable", str(err)) from None
        return ws

    async def _authenticate(self, ws: ClientConnection) -> None:
        region = self.region
        ssl_object = ws.transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            raise TransportUnavailable(region, "tls", "no server certificate")
        try:
            first = decode_frame(await ws.recv())
            if first["t"] == "refused":  # e.g. overloaded, before any hello
                raise TransportUnavailable(
                    region, f"refused:{first.get('reason')}", str(first.get("detail", ""))[:200]
                )
            hello = parse_hello(first)
        except GatewayAuthError as err:
            raise TransportUnavailable(region, "bad_frame", str(err)) from None
        if hello.region != region:
            raise TransportUnavailable(region, "wrong_region", f"the gateway serves {hello.region[:64]!r}")
        nonce = os.urandom(NONCE_BYTES)
        data = transcript(
            region=region,
            cert_sha256=hashlib.sha256(der).digest(),
            server_nonce=hello.nonce,
            client_nonce=nonce,
            device_id=self.device_id,
            key_id=self.key_id,
        )
        signature = sign_transcript(self._auth_key, data)
        await ws.send(auth_frame(Auth(self.device_id, self.key_id, nonce, signature)))
        try:
            answer = decode_frame(await ws.recv())
        except GatewayAuthError as err:
            raise TransportUnavailable(region, "bad_frame", str(err)) from None
        if answer["t"] == "refused":
            reason = answer.get("reason")
            raise TransportUnavailable(region, f"refused:{reason}", str(answer.get("detail", ""))[:200])
        if answer["t"] != "welcome":
            raise TransportUnavailable(region, "bad_frame", "expected welcome")
        session = answer.get("session")
        redelivered = answer.get("redelivered")
        self.sessions += 1
        self._events.put_nowait(
            Connected(
                region,
                session if isinstance(session, bytes) else b"",
                redelivered if type(redelivered) is int else 0,
            )
        )

    def _attach(self, ws: ClientConnection) -> None:
        self._ws = ws
        if self._supervisor is None or self._supervisor.done():
            self._supervisor = asyncio.create_task(self._supervise())

    async def _supervise(self) -> None:
        """Read the session; when it drops, report it and reconnect (jittered back-off) until closed."""
        while not self._stopped():
            ws = self._ws
            if ws is None:
                return
            reason = await self._read(ws)
            if self._ws is ws:
                self._ws = None
            self._fail_pending()
            if self._stopped():
                return
            self._events.put_nowait(Disconnected(self.region, reason))
            if reason == "replaced":
                return
            await self._reconnect()

    def _stopped(self) -> bool:
        return self._closed

    async def _reconnect(self) -> None:
        delay = self.backoff_min_s
        while not self._closed:
            await asyncio.sleep(random.uniform(0, delay))
            try:
                self._ws = await self._open(max(5.0, self.backoff_max_s))
                return
            except TransportUnavailable as err:
                log.debug("reconnecting to %s failed: %s", self.region, err)
            delay = min(self.backoff_max_s, delay * 2)

    async def _read(self, ws: ClientConnection) -> str:
        try:
            async for raw in ws:
                self._dispatch(raw)
        except ConnectionClosed:
            pass
        code = ws.close_code
        if code == REPLACED_CODE:
            return "replaced"
        return "closed" if self._closed else "network"

    def _dispatch(self, raw: Any) -> None:
        try:
            frame = decode_frame(raw)
            kind = frame["t"]
            if kind == "reply":
                self._events.put_nowait(Reply(get_bytes(frame, "id", 16), get_bytes(frame, "body")))
            elif kind == "accepted":
                self._events.put_nowait(Accepted(get_bytes(frame, "id", 16)))
            elif kind == "rejected":
                rid = frame.get("id")
                self._events.put_nowait(
                    Rejected(
                        rid if isinstance(rid, bytes) else None,
                        str(frame.get("reason", "")),
                        str(frame.get("detail", "")),
                    )
                )
            elif kind == "time":
                future = self._clock.get(frame.get("echo"))  # type: ignore[arg-type]
                if future is not None and not future.done():
                    future.set_result(frame)
            elif kind in _WHAT and self._fetch is not None and not self._fetch.done():
                self._fetch.set_result(frame)
        except (GatewayAuthError, TypeError) as err:
            log.warning("ignoring a malformed frame from the %s gateway: %s", self.region, err)

    def _fail_pending(self) -> None:
        err = TransportUnavailable(self.region, "closed", "the session dropped")
        for future in [*self._clock.values(), *([self._fetch] if self._fetch is not None else [])]:
            if not future.done():
                future.set_exception(err)
