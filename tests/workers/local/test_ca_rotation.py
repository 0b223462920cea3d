"""A CA rotation on a running TLS broker, with no restart: trust both, move every certificate over,
stop trusting the old CA. A broker of its own (it changes what the broker trusts)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from cryptography import x509

from edgestream.pipeline.security.identities import Identity
from edgestream.pipeline.security.pki import Pki, TlsFiles
from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.local.broker.process import LocalBroker
from edgestream.workers.local.broker.settings import BrokerSettings
from edgestream.workers.local.broker.state import BrokerState

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalBroker, BrokerState]]:
    broker = LocalBroker(BrokerSettings(home=tmp_path_factory.mktemp("ca-rotation")))
    state = broker.start(timeout_s=120)
    try:
        yield broker, state
    finally:
        broker.stop()


async def _connects(state: BrokerState, files: TlsFiles) -> bool:
    admin = AIOKafkaAdminClient(
        **KafkaSettings.tls(state.bootstrap, files).client_kwargs(), request_timeout_ms=5_000
    )
    try:
        await asyncio.wait_for(admin.start(), 15)
        await admin.describe_cluster()
    except (KafkaError, OSError, TimeoutError):  # a refusal: handshake closed, bootstrap failed, timeout
        return False
    finally:
        await admin.close()
    return True


async def _connects_soon(state: BrokerState, files: TlsFiles, timeout_s: float = 15.0) -> bool:
    """Whether ``files`` connect within ``timeout_s``: the broker applies a reload asynchronously."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await _connects(state, files):
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.5)
    return True


async def _refused_soon(state: BrokerState, files: TlsFiles, timeout_s: float = 15.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while await _connects(state, files):
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.5)
    return True


async def _served_certificate(state: BrokerState, ca_file: Path) -> x509.Certificate:
    """The certificate the broker presents now (fresh handshake), verified against ``ca_file``."""
    host, _, port = state.bootstrap.rpartition(":")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=ca_file)
    assert state.tls_root is not None
    admin = Pki(state.tls_root).files(Identity.admin())
    context.load_cert_chain(admin.cert_file, admin.key_file)
    _reader, writer = await asyncio.open_connection(host, int(port), ssl=context, server_hostname=host)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        await writer.wait_closed()
    return x509.load_der_x509_certificate(der)


async def test_a_ca_rotation_needs_no_restart(own_broker: tuple[LocalBroker, BrokerState]) -> None:
    broker, state = own_broker
    assert state.tls_root is not None
    pki = Pki(state.tls_root)
    pid = state.pid
    old_device = pki.issue(Identity.device("r", "old"))  # signed by the first CA
    assert await _connects(state, old_device)

    # 1. A new CA, trusted beside the old one once the broker re-reads the bundle.
    pki.rotate_ca()
    new_device = pki.issue(Identity.device("r", "new"))
    assert not await _connects(state, new_device), "the broker does not trust the new CA yet"
    await asyncio.to_thread(broker.reload_tls)
    assert await _connects_soon(state, new_device), "trusted after the reload"
    assert await _connects(state, old_device), "the old CA stays trusted during the overlap"

    # 2. The broker's own certificate moves to the new CA.
    before = await _served_certificate(state, pki.ca_file)
    pki.issue(Identity.broker())
    pki.issue(Identity.admin())
    await asyncio.to_thread(broker.reload_tls)
    after = await _served_certificate(state, pki.ca_file)
    for _ in range(30):  # applied asynchronously
        if after.serial_number != before.serial_number:
            break
        await asyncio.sleep(0.5)
        after = await _served_certificate(state, pki.ca_file)
    assert after.serial_number != before.serial_number, "the broker serves its new certificate"
    assert after.issuer != before.issuer, "issued by the new CA"

    # 3. The old CA retired: its certificates are refused from the next handshake on.
    pki.retire_ca()
    await asyncio.to_thread(broker.reload_tls)
    assert await _refused_soon(state, old_device), "a certificate of the retired CA is refused"
    assert await _connects(state, new_device)
    assert broker.status() is not None
    assert broker.status().pid == pid, "the same broker process throughout"  # type: ignore[union-attr]
