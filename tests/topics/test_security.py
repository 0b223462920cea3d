"""The session broker refuses whoever does not belong: TLS 1.3 with client certificates, and ACLs.

Every refusal is checked on both sides where it can be: the client's error, and for the TLS ones the
reason the broker logged (``server.log``), so a test cannot pass because of an unrelated failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
)

from edgestream.pipeline.security.identities import Identity
from edgestream.pipeline.security.pki import Pki, TlsFiles
from edgestream.pipeline.settings import KafkaSettings
from edgestream.topics.acl_admin import apply_policy
from edgestream.topics.admin import ensure_topics
from edgestream.topics.catalogue import audit_topic, edge_group, ingest_topic, region_topics, results_topic
from edgestream.workers.local.broker.state import BrokerState

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def tls_broker(kafka_broker: BrokerState) -> BrokerState:
    if kafka_broker.security_protocol != "SSL" or kafka_broker.tls_root is None:
        pytest.fail("the session broker must speak TLS (EDGESTREAM_TEST_BOOTSTRAP points at a PLAINTEXT one)")
    return kafka_broker


@pytest.fixture
async def two_regions(bootstrap: KafkaSettings, tls_broker: BrokerState) -> tuple[str, str]:
    """Two fresh regions with their topics and the policy's ACLs."""
    names = (f"sa{uuid.uuid4().hex[:8]}", f"sb{uuid.uuid4().hex[:8]}")
    for name in names:
        await ensure_topics(bootstrap, region_topics(name))
    await apply_policy(bootstrap, list(names))
    return names


async def _describe_cluster(admin: AIOKafkaAdminClient) -> None:
    await admin.start()
    await admin.describe_cluster()


async def _join_and_fetch(consumer: AIOKafkaConsumer) -> None:
    await consumer.start()
    await consumer.getmany(timeout_ms=5_000)


async def _eventually(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


def _broker_log_since(state: BrokerState, offset: int) -> str:
    return state.server_log.read_text(errors="replace")[offset:]


def _log_size(state: BrokerState) -> int:
    return len(state.server_log.read_text(errors="replace"))


async def _refused(state: BrokerState, context: ssl.SSLContext) -> str:
    """Connect with ``context``; assert the client is refused; return what the broker logged."""
    offset = _log_size(state)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=state.bootstrap,
        security_protocol="SSL",
        ssl_context=context,
        request_timeout_ms=5_000,
        client_id="refused-client",
    )
    try:
        with pytest.raises((KafkaConnectionError, ssl.SSLError, ConnectionError)):
            await _describe_cluster(admin)
    finally:
        await admin.close()
    for _ in range(50):  # the broker logs the failed handshake asynchronously
        text = _broker_log_since(state, offset)
        if "Failed authentication" in text:
            return text
        await asyncio.sleep(0.1)
    return _broker_log_since(state, offset)


def _context(ca: Path, cert: TlsFiles | None, *, max_tls12: bool = False) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=ca)
    if cert is not None:
        context.load_cert_chain(cert.cert_file, cert.key_file)
    if max_tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    else:
        context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


def _pki(state: BrokerState) -> Pki:
    assert state.tls_root is not None
    return Pki(state.tls_root)


async def test_a_client_without_a_certificate_is_refused(tls_broker: BrokerState) -> None:
    logged = await _refused(tls_broker, _context(_pki(tls_broker).ca_file, None))
    assert "Failed authentication" in logged
    assert "SSL handshake failed" in logged


async def test_a_certificate_from_another_ca_is_refused(tls_broker: BrokerState, tmp_path: Path) -> None:
    stranger = Pki(tmp_path / "other-ca")
    files = stranger.ensure([Identity.admin()])[Identity.admin()]  # "admin", but not signed by our CA
    logged = await _refused(tls_broker, _context(_pki(tls_broker).ca_file, files))
    assert "Failed authentication" in logged
    assert "SSL handshake failed" in logged


async def test_an_expired_certificate_is_refused(tls_broker: BrokerState) -> None:
    pki = _pki(tls_broker)
    now = datetime.now(UTC)
    expired = pki.issue(
        Identity.device("expired", f"d{uuid.uuid4().hex[:6]}"),
        not_before=now - timedelta(days=10),
        not_after=now - timedelta(days=1),
    )
    logged = await _refused(tls_broker, _context(pki.ca_file, expired))
    assert "Failed authentication" in logged
    assert "SSL handshake failed" in logged


async def test_a_client_asking_for_tls_1_2_is_refused(tls_broker: BrokerState) -> None:
    pki = _pki(tls_broker)
    admin = pki.ensure([Identity.admin()])[Identity.admin()]  # a valid certificate, an old protocol
    logged = await _refused(tls_broker, _context(pki.ca_file, admin, max_tls12=True))
    assert "Failed authentication" in logged
    assert "SSL handshake failed" in logged


async def test_a_plaintext_client_gets_nothing(tls_broker: BrokerState) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=tls_broker.bootstrap, request_timeout_ms=3_000)
    try:
        with pytest.raises((KafkaConnectionError, TimeoutError)):
            await asyncio.wait_for(_describe_cluster(admin), 20)
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def _admin_handshake(state: BrokerState) -> AsyncIterator[ssl.SSLObject]:
    """A raw TLS connection to the broker with the admin certificate and Python's default client
    settings (aiokafka's); its TLS object while it is open."""
    pki = _pki(state)
    admin = pki.ensure([Identity.admin()])[Identity.admin()]
    host, _, port = state.bootstrap.rpartition(":")
    context = _context(pki.ca_file, admin)
    _reader, writer = await asyncio.open_connection(host, int(port), ssl=context, server_hostname=host)
    try:
        yield writer.get_extra_info("ssl_object")
    finally:
        writer.close()
        await writer.wait_closed()


async def test_the_broker_listener_offers_tls_1_3_only(tls_broker: BrokerState) -> None:
    """A raw TLS handshake with the admin certificate reports TLSv1.3."""
    async with _admin_handshake(tls_broker) as ssl_object:
        assert ssl_object.version() == "TLSv1.3"
        peer = ssl_object.getpeercert()
        assert peer is not None
        assert ("commonName", "broker") in {item for rdn in peer["subject"] for item in rdn}


def _c1_only(state: BrokerState) -> bool:
    """Whether the broker's JVM runs the quick JIT compiler only (``BrokerSettings.jit`` c1)."""
    if state.pid < 0:
        pytest.skip("an external broker (EDGESTREAM_TEST_BOOTSTRAP): its JVM is not ours to read")
    return b"-XX:TieredStopAtLevel=1" in Path(f"/proc/{state.pid}/cmdline").read_bytes().split(b"\0")


async def test_a_c1_broker_gives_pythons_client_chacha20(tls_broker: BrokerState) -> None:
    """Python's TLS client (aiokafka's) offers AES-256-GCM first; a broker whose JVM has no AES-GCM
    intrinsics (C1 only) answers with ChaCha20-Poly1305, its own first choice."""
    if not _c1_only(tls_broker):
        pytest.skip("the session broker runs C2 (EDGESTREAM_BROKER_JIT=tiered): the JVM's own suites")
    async with _admin_handshake(tls_broker) as ssl_object:
        cipher = ssl_object.cipher()
        assert cipher is not None
        assert cipher[0] == "TLS_CHACHA20_POLY1305_SHA256"


async def test_a_c1_broker_still_speaks_aes_gcm_to_a_client_without_chacha20(tls_broker: BrokerState) -> None:
    """A client that offers AES-GCM only (as a FIPS-restricted one would) is answered with AES-GCM."""
    if not _c1_only(tls_broker):
        pytest.skip("the session broker runs C2 (EDGESTREAM_BROKER_JIT=tiered): the JVM's own suites")
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl command: Python's ssl cannot narrow TLS 1.3 suites")
    pki = _pki(tls_broker)
    admin = pki.ensure([Identity.admin()])[Identity.admin()]
    process = await asyncio.create_subprocess_exec(
        openssl, "s_client", "-connect", tls_broker.bootstrap, "-tls1_3",
        "-ciphersuites", "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256",
        "-CAfile", str(pki.ca_file), "-cert", str(admin.cert_file), "-key", str(admin.key_file),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), 30)
    text = out.decode(errors="replace")
    assert re.search(r"Cipher is TLS_AES_(128|256)_GCM_SHA(256|384)", text), text[-2000:]


def _as(state: BrokerState, identity: Identity) -> KafkaSettings:
    return state.kafka(identity, request_timeout_ms=10_000)


TOPIC_AUTHORIZATION_FAILED = 29


async def _metadata_error(kafka: KafkaSettings, topic: str) -> int:
    """The error code the broker answers a metadata request for ``topic`` with, as ``kafka``."""
    admin = AIOKafkaAdminClient(**kafka.client_kwargs(), request_timeout_ms=10_000)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return int(described["error_code"])


async def _records_seen(kafka: KafkaSettings, topic: str, timeout_ms: int = 3_000) -> list[bytes | None]:
    """What a group-less consumer as ``kafka`` reads from partition 0 of ``topic``; raises the broker's
    authorization error when it sends one."""
    consumer = AIOKafkaConsumer(
        **kafka.client_kwargs(), group_id=None, enable_auto_commit=False, request_timeout_ms=5_000
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        got = await consumer.getmany(tp, timeout_ms=timeout_ms)
        return [r.value for r in got.get(tp, [])]
    finally:
        await consumer.stop()


async def _plant(bootstrap: KafkaSettings, topic: str) -> None:
    """One record on partition 0 of ``topic``, written as admin: something a refused reader could leak."""
    producer = AIOKafkaProducer(**bootstrap.client_kwargs(), acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"secret", partition=0)
    finally:
        await producer.stop()


async def test_a_region_worker_cannot_read_another_regions_ingest(
    bootstrap: KafkaSettings, tls_broker: BrokerState, two_regions: tuple[str, str]
) -> None:
    mine, theirs = two_regions
    worker = _as(tls_broker, Identity.edge(mine))
    for region in two_regions:
        await _plant(bootstrap, ingest_topic(region, "frame"))
    assert await _metadata_error(worker, ingest_topic(theirs, "frame")) == TOPIC_AUTHORIZATION_FAILED
    assert await _records_seen(worker, ingest_topic(theirs, "frame")) == []
    # Its own region's ingest it reads (the policy is not simply "deny everything").
    assert await _metadata_error(worker, ingest_topic(mine, "frame")) == 0
    assert await _records_seen(worker, ingest_topic(mine, "frame"), timeout_ms=10_000) == [b"secret"]


async def test_a_region_worker_cannot_write_another_regions_results(
    tls_broker: BrokerState, two_regions: tuple[str, str]
) -> None:
    mine, theirs = two_regions
    producer = AIOKafkaProducer(**_as(tls_broker, Identity.edge(mine)).client_kwargs(), acks="all")
    await producer.start()
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            async with asyncio.timeout(20):
                await producer.send_and_wait(results_topic(theirs), b"forged")
        await producer.send_and_wait(results_topic(mine), b"its own")  # allowed
    finally:
        await producer.stop()
    # The broker refuses even to describe the topic to it (so the client never gets to send), and its
    # authorizer says so, naming the principal, the operation and the resource.
    denial = re.compile(
        rf"Principal = User:edge-{mine} is Denied operation = (DESCRIBE|WRITE) .*"
        rf"resource = Topic:LITERAL:{re.escape(results_topic(theirs))} "
    )

    def logged() -> bool:
        log = tls_broker.log_dir / "authorizer.log"
        return log.exists() and denial.search(log.read_text(errors="replace")) is not None

    assert await _eventually(logged), "the broker's authorizer logged the denial"


async def test_another_regions_worker_cannot_join_the_group(
    tls_broker: BrokerState, two_regions: tuple[str, str]
) -> None:
    mine, theirs = two_regions
    consumer = AIOKafkaConsumer(
        ingest_topic(mine, "frame"),
        **_as(tls_broker, Identity.edge(theirs)).client_kwargs(),
        group_id=edge_group(mine),
        enable_auto_commit=False,
    )
    with pytest.raises((GroupAuthorizationFailedError, TopicAuthorizationFailedError)):
        await asyncio.wait_for(_join_and_fetch(consumer), 30)
    await consumer.stop()


@pytest.mark.parametrize("kind", ["ingest", "audit"])
async def test_a_device_cannot_read_ingest_or_audit(
    bootstrap: KafkaSettings, tls_broker: BrokerState, two_regions: tuple[str, str], kind: str
) -> None:
    region = two_regions[0]
    topic = ingest_topic(region, "embedding") if kind == "ingest" else audit_topic(region)
    await _plant(bootstrap, topic)
    device = _as(tls_broker, Identity.device(region))
    if kind == "ingest":  # it may describe ingest (it writes there), so the fetch itself is refused
        with pytest.raises(TopicAuthorizationFailedError):
            await _records_seen(device, topic)
    else:  # audit it may not even see
        assert await _metadata_error(device, topic) == TOPIC_AUTHORIZATION_FAILED
        assert await _records_seen(device, topic) == []


async def test_a_device_writes_ingest_and_reads_results_of_its_region(
    bootstrap: KafkaSettings, tls_broker: BrokerState, two_regions: tuple[str, str]
) -> None:
    region = two_regions[0]
    device = _as(tls_broker, Identity.device(region))
    producer = AIOKafkaProducer(**device.client_kwargs(), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(ingest_topic(region, "frame"), b"sealed", key=b"dev-1")
        with pytest.raises(TopicAuthorizationFailedError):  # but not another region's ingest
            async with asyncio.timeout(20):
                await producer.send_and_wait(ingest_topic(two_regions[1], "frame"), b"sealed")
    finally:
        await producer.stop()
    admin_producer = AIOKafkaProducer(**bootstrap.client_kwargs())
    await admin_producer.start()
    try:
        await admin_producer.send_and_wait(results_topic(region), b"answer", partition=0)
    finally:
        await admin_producer.stop()
    consumer = AIOKafkaConsumer(**device.client_kwargs(), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(results_topic(region), 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        got = await consumer.getmany(tp, timeout_ms=10_000)
        assert [r.value for r in got.get(tp, [])] == [b"answer"]
    finally:
        await consumer.stop()
