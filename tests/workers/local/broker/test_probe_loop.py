"""A probe's own event loop closes what an interrupted client left open before it ends."""

from __future__ import annotations

import asyncio
import socket

from edgestream.workers.local.broker.probe import own_loop


def test_a_connection_left_open_is_closed_when_the_probe_ends() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    left: list[asyncio.StreamWriter] = []

    async def leaves_a_connection_open() -> int:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        left.append(writer)  # as a client cancelled mid-start would: never closed
        return 7

    try:
        assert asyncio.run(own_loop(leaves_a_connection_open())) == 7
    finally:
        server.close()
    assert left[0].transport.is_closing()
