"""TLS contexts in real handshakes on 127.0.0.1: what the client context accepts and what gets refused.

The server accepts plain TCP and upgrades with ``StreamWriter.start_tls(server_context(...))``, so the
test sees the server's own verdict on each handshake (a completed TLS 1.3 session and the client's
certificate, or the error it refused with) instead of guessing it from how the client's socket closed.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from cryptography import x509

from edgestream.pipeline.errors import ConfigError
from edgestream.pipeline.security.certificates import PRINCIPAL_MAPPING_RULES
from edgestream.pipeline.security.identities import Identity
from edgestream.pipeline.security.pki import Pki
from edgestream.pipeline.security.tls import client_context, server_context

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

TIMEOUT_S = 10.0
"""Bound on every network step; a healthy step takes milliseconds."""
REFUSED = (ssl.SSLError, ConnectionResetError, asyncio.IncompleteReadError)
"""How a client may see a refused handshake: an alert, a reset, or the connection closing unread."""
X509_V_ERR_CERT_HAS_EXPIRED = 10
X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20
X509_V_ERR_INVALID_PURPOSE = 26
X509_V_ERR_HOSTNAME_MISMATCH = 62

EDGE = Identity.edge("eu-west")


@dataclass(frozen=True)
class Handshake:
    """A TLS session the server completed."""

    version: str | None
    """Negotiated protocol, e.g. ``TLSv1.3``."""
    peer_subject: str
    """The client certificate's subject, RFC 4514."""


Outcome = Handshake | ssl.SSLError | ConnectionError
"""What the server made of one connection."""


class TlsServer:
    """An echo server on 127.0.0.1 that upgrades each connection with ``context`` and reports the outcome."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.outcomes: asyncio.Queue[Outcome] = asyncio.Queue()
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await writer.start_tls(self.context)
        except (ssl.SSLError, ConnectionError) as e:  # the refusal under test: reported, not swallowed
            writer.close()
            self.outcomes.put_nowait(e)
            return
        ssl_object = writer.get_extra_info("ssl_object")
        peer = x509.load_der_x509_certificate(ssl_object.getpeercert(binary_form=True))
        self.outcomes.put_nowait(Handshake(ssl_object.version(), peer.subject.rfc4514_string()))
        data = await reader.readexactly(4)
        writer.write(b"echo:" + data)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def outcome(self) -> Outcome:
        """The outcome of the next connection, in arrival order."""
        return await asyncio.wait_for(self.outcomes.get(), TIMEOUT_S)

    async def exchange(self, context: ssl.SSLContext, host: str = "localhost") -> tuple[bytes, str | None]:
        """Connect with ``context`` as ``host``, send ``ping``; the reply and the negotiated protocol."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", self.port, ssl=context, server_hostname=host), TIMEOUT_S
        )
        try:
            writer.write(b"ping")
            await writer.drain()
            reply = await asyncio.wait_for(reader.readexactly(9), TIMEOUT_S)
            return reply, writer.get_extra_info("ssl_object").version()
        finally:
            writer.close()
            await writer.wait_closed()

    async def refused(self, context: ssl.SSLContext, host: str = "localhost") -> BaseException:
        """Connect with ``context`` and wait for the first byte, which must never come; how it failed.

        The client sends nothing after its handshake, so a refusing server has read everything and the
        client sees the close (or the alert), never a reset racing unread data.
        """
        with pytest.raises(REFUSED) as info:
            await self._first_byte(context, host)
        return info.value

    async def _first_byte(self, context: ssl.SSLContext, host: str) -> bytes:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", self.port, ssl=context, server_hostname=host), TIMEOUT_S
        )
        try:
            return await asyncio.wait_for(reader.readexactly(1), TIMEOUT_S)
        finally:
            writer.close()
            await writer.wait_closed()


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A PKI with the broker's and an edge worker's certificates."""
    pki = Pki(tmp_path / "tls")
    pki.ensure([Identity.broker(), EDGE])
    return pki


@pytest.fixture
def foreign(tmp_path: Path) -> Pki:
    """Another CA that issued the same identities."""
    other = Pki(tmp_path / "foreign")
    other.ensure([Identity.broker(), EDGE])
    return other


@asynccontextmanager
async def _serve(context: ssl.SSLContext) -> AsyncIterator[TlsServer]:
    """A ``TlsServer`` listening on a free loopback port until the block ends."""
    server = TlsServer(context)
    listener = await asyncio.start_server(server._handle, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    async with listener:
        yield server


@pytest.fixture
async def broker(pki: Pki) -> AsyncIterator[TlsServer]:
    """A TLS server with the broker's certificate and ``server_context``."""
    async with _serve(server_context(pki.files(Identity.broker()))) as server:
        yield server


def _principal(subject: str) -> str:
    pattern, replacement, _ = (
        PRINCIPAL_MAPPING_RULES.removeprefix("RULE:").removesuffix(",DEFAULT").split("/")
    )
    match = re.fullmatch(pattern, subject)
    assert match is not None, subject
    return match.expand(replacement.replace("$1", r"\1"))


def _no_certificate_context(ca_file: Path) -> ssl.SSLContext:
    """A TLS 1.3 client that trusts the broker but has no certificate of its own."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(cafile=ca_file)
    return context


def _refusal(outcome: Outcome) -> ssl.SSLError:
    """The server's error for a connection it refused (fails the test if it completed a handshake)."""
    assert isinstance(outcome, ssl.SSLError), f"the server completed a handshake: {outcome}"
    return outcome


# -- accepted ---------------------------------------------------------------------------------------


def test_client_context_settings(pki: Pki) -> None:
    context = client_context(pki.files(EDGE))
    assert context.protocol == ssl.PROTOCOL_TLS_CLIENT
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    server = server_context(pki.files(Identity.broker()))
    assert server.minimum_version == ssl.TLSVersion.TLSv1_3
    assert server.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
async def test_mutual_tls13_handshake_and_the_server_sees_the_principal(
    pki: Pki, broker: TlsServer, host: str
) -> None:
    reply, version = await broker.exchange(client_context(pki.files(EDGE)), host)
    assert reply == b"echo:ping"
    assert version == "TLSv1.3"
    outcome = await broker.outcome()
    assert outcome == Handshake("TLSv1.3", "CN=worker,OU=edge-eu-west,O=edgestream")
    assert _principal(outcome.peer_subject) == "edge-eu-west"


async def test_both_pairs_of_a_rotated_identity_are_accepted(pki: Pki, broker: TlsServer) -> None:
    pki.rotate(EDGE)
    for files in (pki.files(EDGE), pki.files(EDGE, previous=True)):
        assert (await broker.exchange(client_context(files)))[0] == b"echo:ping"
        assert isinstance(await broker.outcome(), Handshake)
    pki.retire(EDGE)
    assert (await broker.exchange(client_context(pki.files(EDGE))))[0] == b"echo:ping"


async def test_ca_rotation_over_tls(pki: Pki) -> None:
    """Old- and new-CA leaves interoperate while both CAs are trusted; after retire_ca the old is refused."""
    node = Identity.edge("eu-west", "node-2")
    pki.rotate_ca()
    pki.rotate(Identity.broker())  # the broker moves to the new CA, EDGE stays on the old one
    pki.issue(node)  # a new node gets a new-CA certificate
    async with _serve(server_context(pki.files(Identity.broker()))) as server:
        for identity in (EDGE, node):
            assert (await server.exchange(client_context(pki.files(identity))))[0] == b"echo:ping"
            assert isinstance(await server.outcome(), Handshake)

    pki.retire(Identity.broker())
    pki.retire_ca()
    async with _serve(server_context(pki.files(Identity.broker()))) as server:  # reloads the bundle
        assert (await server.exchange(client_context(pki.files(node))))[0] == b"echo:ping"
        assert isinstance(await server.outcome(), Handshake)
        await server.refused(client_context(pki.files(EDGE)))
        error = _refusal(await server.outcome())
        assert isinstance(error, ssl.SSLCertVerificationError)
        assert error.verify_code == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY


# -- refused by the server --------------------------------------------------------------------------


async def test_client_without_a_certificate_is_refused(pki: Pki, broker: TlsServer) -> None:
    await broker.refused(_no_certificate_context(pki.ca_file))
    assert _refusal(await broker.outcome()).reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"


async def test_client_certificate_from_another_ca_is_refused(
    pki: Pki, foreign: Pki, broker: TlsServer
) -> None:
    files = replace(foreign.files(EDGE), ca_file=pki.ca_file)  # trusts the broker, foreign identity
    await broker.refused(client_context(files))
    error = _refusal(await broker.outcome())
    assert isinstance(error, ssl.SSLCertVerificationError)
    assert error.verify_code == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY


async def test_expired_client_certificate_is_refused(pki: Pki, broker: TlsServer) -> None:
    now = datetime.now(UTC)
    expired = Identity.edge("eu-west", "stale")
    files = pki.issue(expired, not_before=now - timedelta(days=31), not_after=now - timedelta(days=1))
    await broker.refused(client_context(files))
    error = _refusal(await broker.outcome())
    assert isinstance(error, ssl.SSLCertVerificationError)
    assert error.verify_code == X509_V_ERR_CERT_HAS_EXPIRED


async def test_client_capped_at_tls12_is_refused(pki: Pki, broker: TlsServer) -> None:
    context = client_context(pki.files(EDGE))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    await broker.refused(context)
    assert _refusal(await broker.outcome()).reason == "UNSUPPORTED_PROTOCOL"


# -- refused by the client --------------------------------------------------------------------------


async def test_server_certificate_for_another_host_is_refused(pki: Pki, broker: TlsServer) -> None:
    error = await broker.refused(client_context(pki.files(EDGE)), host="kafka.example.com")
    assert isinstance(error, ssl.SSLCertVerificationError)
    assert error.verify_code == X509_V_ERR_HOSTNAME_MISMATCH
    assert not isinstance(await broker.outcome(), Handshake)


async def test_server_without_server_auth_is_refused(pki: Pki) -> None:
    """An edge certificate (clientAuth only) cannot pose as the broker."""
    async with _serve(server_context(pki.files(EDGE))) as server:
        error = await server.refused(client_context(pki.files(Identity.broker())))
        assert isinstance(error, ssl.SSLCertVerificationError)
        assert error.verify_code == X509_V_ERR_INVALID_PURPOSE
        assert not isinstance(await server.outcome(), Handshake)


async def test_server_from_another_ca_is_refused(pki: Pki, foreign: Pki) -> None:
    context = server_context(replace(foreign.files(Identity.broker()), ca_file=pki.ca_file))
    async with _serve(context) as server:
        error = await server.refused(client_context(pki.files(EDGE)))
        assert isinstance(error, ssl.SSLCertVerificationError)
        assert error.verify_code == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
        assert not isinstance(await server.outcome(), Handshake)


async def test_client_offers_nothing_older_than_tls13(pki: Pki) -> None:
    """A server that speaks TLS 1.2 at most finds no version in common with the client."""
    context = server_context(pki.files(Identity.broker()))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    async with _serve(context) as server:
        await server.refused(client_context(pki.files(EDGE)))
        assert _refusal(await server.outcome()).reason == "UNSUPPORTED_PROTOCOL"


# -- configuration errors ---------------------------------------------------------------------------


def test_missing_files_are_a_config_error_naming_them(pki: Pki, tmp_path: Path) -> None:
    files = replace(pki.files(EDGE), key_file=tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match=r"nope\.pem"):
        client_context(files)


def test_a_key_readable_by_others_is_warned_about(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = tmp_path / "shared-key.pem"
    key.write_bytes(pki.files(EDGE).key_file.read_bytes())
    key.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="edgestream.pipeline.security.tls"):
        client_context(replace(pki.files(EDGE), key_file=key))
    assert "readable by group or others" in caplog.text
    assert "PRIVATE KEY" not in caplog.text
