"""The uvloop loop our processes run on: a client TLS connection closes even when the peer never
answers its close_notify (as the Kafka broker's TLS 1.3 engine often does not), instead of hanging for
uvloop's default 30 s; and a coroutine runs to its result on either loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from pathlib import Path

import pytest

from edgestream.pipeline import eventloop
from edgestream.pipeline.security.identities import Identity
from edgestream.pipeline.security.pki import Pki


def _silent_tls_server(pki: Pki) -> tuple[int, threading.Event]:
    """A TLS 1.3 server that completes one handshake, then neither reads nor closes until told: the
    client's close_notify is never answered."""
    files = pki.issue(Identity.broker())
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(files.cert_file, files.key_file)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    done = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with context.wrap_socket(conn, server_side=True):
            done.wait(60)
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return port, done


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
def test_a_client_tls_close_does_not_wait_for_a_close_notify_that_never_comes(
    tmp_path: Path, event_loop: eventloop.EventLoop
) -> None:
    pki = Pki(tmp_path / "tls")
    pki.init()
    port, done = _silent_tls_server(pki)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cafile=pki.ca_file)

    async def connect_and_close() -> float:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        loop = asyncio.get_running_loop()
        began = loop.time()
        writer.close()
        # The loops' own default waits 30 s, and wait_for gives up at 20; TimeoutError is also how a
        # close ended by the shutdown timeout reports itself.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 20)
        return loop.time() - began

    try:
        took = eventloop.run(connect_and_close(), event_loop)
    finally:
        done.set()
    assert took < 20
