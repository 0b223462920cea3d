"""Which event loop a process runs on, and running a coroutine on it.

uvloop (libuv) costs less CPU per TLS frame and socket write than asyncio's own loop, which is what
the edge worker, the gateway and the simulated fleets spend most of their time on; ``asyncio`` stays
selectable for debugging (asyncio's debug mode and its slow-callback warnings need it).

One difference matters: closing a TLS connection. A loop sends close_notify and then waits for the
peer's, up to its ``ssl_shutdown_timeout`` (30 s in uvloop and in asyncio). The Kafka broker (Java's
TLS 1.3 engine takes close_notify as a half-close) often sends none back, and on uvloop one in a few
stops of an aiokafka client hung for 30 s: the demo's story reads the workers' reports with a
short-lived client on every step of the rollout controller, so each step took 31 s and a canary
stalled in CI. The loops made here give every client connection they open ``SSL_SHUTDOWN_TIMEOUT_S``
instead: the close_notify is sent and the socket is closed soon after, whether or not one comes back
(a Kafka client closes once its requests are answered, so nothing is left to flush).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from functools import cache
from typing import Any, Final, Literal, TypeVar

T = TypeVar("T")

EventLoop = Literal["uvloop", "asyncio"]
"""``uvloop`` or ``asyncio`` (the standard library's loop)."""

SSL_SHUTDOWN_TIMEOUT_S: Final = 0.5
"""How long a client TLS connection's close waits for the peer's close_notify (uvloop's default: 30)."""


def _with_shutdown_timeout(kwargs: dict[str, Any]) -> dict[str, Any]:
    if kwargs.get("ssl") and kwargs.get("ssl_shutdown_timeout") is None:
        kwargs["ssl_shutdown_timeout"] = SSL_SHUTDOWN_TIMEOUT_S
    return kwargs


@cache
def _uvloop_class() -> type[asyncio.AbstractEventLoop]:
    import uvloop

    class Loop(uvloop.Loop):
        async def create_connection(self, *args: Any, **kwargs: Any) -> Any:
            return await super().create_connection(*args, **_with_shutdown_timeout(kwargs))

    return Loop


class _AsyncioLoop(asyncio.SelectorEventLoop):
    async def create_connection(self, *args: Any, **kwargs: Any) -> Any:
        return await super().create_connection(*args, **_with_shutdown_timeout(kwargs))


def new_uvloop() -> asyncio.AbstractEventLoop:
    """A uvloop loop whose client TLS connections close within ``SSL_SHUTDOWN_TIMEOUT_S``."""
    return _uvloop_class()()


def new_asyncio_loop() -> asyncio.AbstractEventLoop:
    """The standard library's loop, its client TLS connections closing as :func:`new_uvloop`'s do."""
    return _AsyncioLoop()


def run(main: Coroutine[Any, Any, T], event_loop: EventLoop = "uvloop") -> T:
    """Run ``main`` to completion on a new loop of the kind asked for, as ``asyncio.run`` does."""
    factory = new_uvloop if event_loop == "uvloop" else new_asyncio_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
