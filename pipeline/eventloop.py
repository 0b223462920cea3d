"""Which event loop a process runs on, and running a coroutine on it.

uvloop (libuv) costs less CPU per TLS frame and socket write than asyncio's own loop, which is what
the edge worker, the gateway and the simulated fleets spend most of their time on; ``asyncio`` stays
selectable for debugging (asyncio's debug mode and its slow-callback warnings need it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")

EventLoop = Literal["uvloop", "asyncio"]
"""``uvloop`` or ``asyncio`` (the standard library's loop)."""


def run(main: Coroutine[Any, Any, T], event_loop: EventLoop = "uvloop") -> T:
    """Run ``main`` to completion on a new loop of the kind asked for, as ``asyncio.run`` does."""
    if event_loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    return asyncio.run(main)
