"""The gateway process: the WebSocket server, its Kafka producer, the reply router and the housekeeping.

`Gateway` owns the sessions (one per device; a newer one closes the older with code 4409), the
mailboxes, the device directory (reloaded when its file changes) and the Kafka clients, made through
``pipeline/kafka.py``: an idempotent producer for envelopes and reports, and one consumer of the
region's replies topic with every partition assigned, from the end, and no group. Each reply is routed
by its record key (the device id) to that device's mailbox and, when it is connected, its session;
the gateway never opens a reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import ssl
import time
from collections.abc import Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from aiokafka import TopicPartition
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from edgestream.pipeline import kafka
from edgestream.pipeline.contract.envelope import REQUEST_ID_BYTES
from edgestream.pipeline.contract.gatewayauth import Directory, read_directory
from edgestream.pipeline.contract.gatewayframes import encode_frame
from edgestream.pipeline.errors import ConfigError
from edgestream.pipeline.heap import freeze_startup_heap
from edgestream.pipeline.observability.health import HealthServer
from edgestream.topics.catalogue import KINDS, REPLIES, ingest_topic, replies_topic, reports_topic
from edgestream.workers.gateway.files import FileServer, artifact_store
from edgestream.workers.gateway.mailbox import Mailboxes, TokenBucket
from edgestream.workers.gateway.metrics import GatewayMetrics
from edgestream.workers.gateway.session import AUTH_FRAME_MAX_BYTES, REPLACED, Session, authenticate, refuse

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from edgestream.workers.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

SWEEP_S: Final = 1.0
"""How often held replies are expired and the directory's file is checked."""
FETCH_MS: Final = 500
"""Longest one fetch of replies waits."""
_REPLY_PREFIX: Final = 2
"""A sealed reply's request id follows its 2-byte contract version."""


def source_of(address: Any) -> str:
    """Where a connection comes from, for ``max_pending_per_source``: its IPv4 address, or its IPv6
    address's /64 (one host or site usually holds a whole /64: counted by address, it would be as many
    sources as it likes)."""
    host = str(address[0]) if isinstance(address, tuple) and address else "?"
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if ip.version == 6 and ip.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip.ipv4_mapped or ip) if ip.version == 6 else str(ip)


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """TLS 1.3 only, serving ``cert_file``; devices are not asked for certificates (they sign)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        context.load_cert_chain(certfile=cert_file, keyfile=key_file)
    except OSError as err:
        raise ConfigError(f"cannot load the gateway's server certificate {cert_file}: {err}") from err
    return context


class Gateway:
    """One region's device gateway; ``async with`` it, or `start` and `stop`."""

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        producer: AIOKafkaProducer | None = None,
        replies: AIOKafkaConsumer | None = None,
    ) -> None:
        """``producer`` and ``replies`` replace the Kafka clients the factory makes (tests without a
        broker pass stand-ins with the same methods)."""
        self.settings = settings
        self.node = settings.node
        """This gateway's name."""
        self.metrics = GatewayMetrics(settings.region, self.node)
        self.mailboxes = Mailboxes(settings.hold_s, settings.hold_max)
        self.sessions: dict[str, Session] = {}
        """The authenticated session of each connected device."""
        self.connections = 0
        """Open connections, authenticated or not."""
        self.pending = 0
        """Connections not yet authenticated (``max_pending``)."""
        self.pending_by_source: dict[str, int] = {}
        """Of those, how many from each source (an IPv4 address, an IPv6 /64: ``max_pending_per_source``)."""
        self._refusing = 0
        """Connections being refused ``overloaded`` now; past ``max_pending`` more are cut at once."""
        self._buckets: dict[str, TokenBucket] = {}
        """Each connected device's envelope rate, shared by its sessions."""
        self._left_buckets: dict[str, TokenBucket] = {}
        """The rate of devices whose session ended, kept until their bucket would be full again (a
        device that reconnects continues with the tokens it left, not a full bucket)."""
        self.ingest_topics = {kind: ingest_topic(settings.region, kind) for kind in KINDS}
        """Where each kind of envelope goes."""
        self.reports_topic = reports_topic(settings.region)
        self.files = FileServer(settings.catalogue_path(), artifact_store(settings))
        cert_file, key_file = settings.server_files()
        self.ssl = server_context(str(cert_file), str(key_file))
        try:
            der = x509.load_pem_x509_certificate(cert_file.read_bytes()).public_bytes(Encoding.DER)
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot read the gateway's server certificate {cert_file}: {err}") from err
        self.cert_sha256 = hashlib.sha256(der).digest()
        """SHA-256 of the leaf certificate devices see (bound into every transcript)."""
        self._directory_path = settings.directory_path()
        self._directory_mtime = (
            self._directory_path.stat().st_mtime_ns if self._directory_path.exists() else 0
        )
        self.directory: Directory = read_directory(self._directory_path, settings.region)
        client_id = f"edgestream-{self.node}"
        self.producer: AIOKafkaProducer = producer or kafka.producer(
            settings.kafka, client_id, linger_ms=settings.linger_ms
        )
        self._consumer: AIOKafkaConsumer = replies or kafka.consumer(
            settings.kafka, f"{client_id}-replies", isolation_level="read_uncommitted"
        )
        self._server: Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._health: HealthServer | None = None
        self.ready = False
        """True once the producer and the reply consumer run and the server listens."""
        self.metrics.watch_ready(self.readiness)

    @property
    def port(self) -> int:
        """The port the WebSocket server listens on."""
        if self._server is None:
            raise RuntimeError("the gateway is not started")
        return int(next(iter(self._server.sockets)).getsockname()[1])

    @property
    def health_port(self) -> int | None:
        """The port of /livez, /readyz and /metrics, when they are served."""
        return None if self._health is None else self._health.port

    def readiness(self) -> tuple[bool, str]:
        """What ``/readyz`` and ``edgestream_ready`` say: (ready, reason)."""
        return self.ready, "ok" if self.ready else "starting"

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` in the background, keeping a reference until it is done."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        """Start the Kafka clients (replies read from their end), then listen."""
        await self.producer.start()
        try:
            await self._start_replies()
        except BaseException:
            await self.producer.stop()
            raise
        settings = self.settings
        self._server = await serve(
            self._handle,
            settings.host,
            settings.port,
            ssl=self.ssl,
            compression=None,
            max_size=AUTH_FRAME_MAX_BYTES,  # until authenticated (session.authenticate raises it)
            ping_interval=settings.ping_interval_s,
            ping_timeout=settings.ping_interval_s,
            open_timeout=settings.auth_timeout_s,
            # open_timeout runs from the TCP accept, so it already bounds the TLS handshake (measured);
            # this keeps asyncio's own handshake bound (60 s by default) no longer, whatever websockets does.
            ssl_handshake_timeout=settings.auth_timeout_s,
            server_header=None,
        )
        self._loops = [asyncio.create_task(self._route_replies()), asyncio.create_task(self._housekeeping())]
        if settings.health_port is not None:
            self._health = HealthServer(
                live=lambda: (True, "ok"),
                ready=self.readiness,
                registry=self.metrics.registry,
                host=settings.health_host,
                port=settings.health_port,
            )
            await self._health.start()
        freeze_startup_heap("gateway")
        self.ready = True
        log.info("gateway %s serving %s on wss://%s:%d", self.node, settings.region, settings.host, self.port)

    async def _start_replies(self) -> None:
        await self._consumer.start()
        topic = replies_topic(self.settings.region)
        await self._consumer.topics()
        partitions = self._consumer.partitions_for_topic(topic) or set(range(REPLIES.partitions))
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        self._consumer.assign(tps)
        await self._consumer.seek_to_end(*tps)
        for tp in tps:  # pin the end now, so replies produced from here on are all read
            await self._consumer.position(tp)

    async def stop(self) -> None:
        """Close every session, stop listening, stop the Kafka clients. Idempotent."""
        self.ready = False
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._health is not None:
            await self._health.stop()
            self._health = None
        await self._consumer.stop()
        await self.producer.stop()

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- sessions ---------------------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        self.connections += 1
        self.metrics.connections.set(self.connections)
        try:
            device_id = await self._authenticate(ws)
            if device_id is not None:
                await self._serve(ws, device_id)
        except ConnectionClosed:
            pass
        except Exception:  # a bug must cost one connection, never the gateway
            log.exception("a device connection failed")
        finally:
            self.connections -= 1
            self.metrics.connections.set(self.connections)

    async def _authenticate(self, ws: ServerConnection) -> str | None:
        """Authenticate the connection within the pending caps, then check the session cap: the device,
        or None after a ``refused``."""
        settings = self.settings
        source = source_of(ws.remote_address)
        from_source = self.pending_by_source.get(source, 0)
        if self.pending >= settings.max_pending or from_source >= settings.max_pending_per_source:
            if self._refusing >= settings.max_pending:  # each refusal may take 5 s: not without bound
                self.metrics.refused["overloaded"].inc()
                ws.transport.abort()
                return None
            text = (
                f"{settings.max_pending} connections are authenticating"
                if self.pending >= settings.max_pending
                else f"{settings.max_pending_per_source} connections from one address are authenticating"
            )
            self._refusing += 1
            try:
                await refuse(self, ws, "overloaded", text)
            finally:
                self._refusing -= 1
            return None
        self.pending += 1
        self.pending_by_source[source] = from_source + 1
        try:
            device_id = await authenticate(self, ws)
        finally:
            self.pending -= 1
            left = self.pending_by_source[source] - 1
            if left:
                self.pending_by_source[source] = left
            else:
                del self.pending_by_source[source]
        if (
            device_id is not None
            and len(self.sessions) >= settings.max_sessions
            and device_id not in self.sessions
        ):
            await refuse(self, ws, "overloaded", f"the gateway serves {settings.max_sessions} sessions")
            return None
        return device_id

    def device_bucket(self, device_id: str) -> TokenBucket:
        """The envelope rate of ``device_id``, shared by its sessions (made full for a new device)."""
        bucket = self._buckets.get(device_id)
        if bucket is None:
            bucket = self._left_buckets.pop(device_id, None)
            if bucket is None:
                bucket = TokenBucket.full(self.settings.rate_per_s, self.settings.burst, time.monotonic())
            self._buckets[device_id] = bucket
        return bucket

    async def _serve(self, ws: ServerConnection, device_id: str) -> None:
        session = Session(self, ws, device_id)
        older = self.sessions.get(device_id)
        self.sessions[device_id] = session  # from here on, new replies go to this session's outbox
        try:  # whatever fails from here on, the device's entry and bucket are let go
            if older is not None:
                older.close(REPLACED, "replaced")
            held = self.mailboxes.held(device_id, time.monotonic())
            session.send(
                encode_frame(
                    "welcome",
                    session=session.session_id,
                    now_ms=time.time_ns() // 1_000_000,
                    redelivered=len(held),
                )
            )
            for frame in held:
                session.send(frame)
            self.metrics.sessions.set(len(self.sessions))
            session.writer = asyncio.create_task(session.write())
            await session.read()
        finally:
            if self.sessions.get(device_id) is session:
                del self.sessions[device_id]
                self.metrics.sessions.set(len(self.sessions))
                self._left_buckets[device_id] = self._buckets.pop(device_id)
            session.outbox.put_nowait(None)
            if session.writer is not None:
                await session.writer

    # -- replies ----------------------------------------------------------------------------------------

    async def _route_replies(self) -> None:
        while True:
            try:
                batch = await self._consumer.getmany(timeout_ms=FETCH_MS)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the consumer reconnects on its own; keep reading
                log.warning("reading replies failed: %s", err)
                await asyncio.sleep(1.0)
                continue
            now = time.monotonic()
            for records in batch.values():
                for record in records:
                    self.route(record.key, record.value, now)

    def route(self, key: bytes | None, value: bytes | None, now: float) -> None:
        """Hold one sealed reply for its device and send it if the device is connected."""
        replies = self.metrics.replies
        if key is None or value is None or len(value) < _REPLY_PREFIX + REQUEST_ID_BYTES:
            replies["malformed"].inc()
            return
        try:
            device_id = key.decode()
        except UnicodeDecodeError:
            replies["malformed"].inc()
            return
        rid = value[_REPLY_PREFIX : _REPLY_PREFIX + REQUEST_ID_BYTES]
        frame = encode_frame("reply", id=rid, body=value)
        dropped = self.mailboxes.counts.dropped
        self.mailboxes.put(device_id, rid, frame, now)
        if self.mailboxes.counts.dropped != dropped:
            replies["dropped"].inc()
        session = self.sessions.get(device_id)
        if session is None:
            replies["held"].inc()
        else:
            replies["routed"].inc()
            session.send(frame)

    async def produce_report(self, device_id: str, body: bytes) -> None:
        """Hand one device report, keyed by its device, to the producer (waiting only while its buffer is
        full); counted once the broker has it. Before, each report was a task awaiting its delivery, so
        a slow broker let them pile up without holding any device back."""
        try:
            future = await self.producer.send(self.reports_topic, body, key=device_id.encode())
        except Exception as err:  # a lost report is counted by its absence; never stops the session
            log.warning("could not produce a report of %r: %s", device_id, err)
            return
        future.add_done_callback(partial(self._reported, device_id))

    def _reported(self, device_id: str, future: asyncio.Future[Any]) -> None:
        err = None if future.cancelled() else future.exception()
        if future.cancelled() or err is not None:
            log.warning("could not produce a report of %r: %s", device_id, err)
            return
        self.metrics.reports.inc()

    # -- housekeeping -----------------------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        polled = time.monotonic()
        while True:
            await asyncio.sleep(SWEEP_S)
            now = time.monotonic()
            expired = self.mailboxes.expire(now)
            if expired:
                self.metrics.replies["expired"].inc(expired)
            self.metrics.held.set(len(self.mailboxes))
            self.forget_buckets(now)
            if now - polled >= self.settings.directory_poll_s:
                polled = now
                await self.reload_directory()

    def forget_buckets(self, now: float) -> None:
        """Drop the rates of devices without a session whose bucket is full again."""
        left = self._left_buckets
        for device_id in [d for d, bucket in left.items() if bucket.refilled(now)]:
            del left[device_id]

    async def reload_directory(self) -> None:
        """Re-read the directory when its file changed (in a thread: 50,000 devices took 339 ms of the
        loop, 2026-12-07); keep the old one if the new one is bad."""
        try:
            mtime = self._directory_path.stat().st_mtime_ns
        except OSError:
            return
        if mtime == self._directory_mtime:
            return
        self._directory_mtime = mtime
        try:
            path, region = self._directory_path, self.settings.region
            self.directory = await asyncio.to_thread(read_directory, path, region)
        except ConfigError as err:
            log.error("keeping the previous device directory: %s", err)
            return
        log.info("device directory reloaded: %d devices", len(self.directory))
