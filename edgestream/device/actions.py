"""What the SDK does about a gateway's ``rejected`` frame or a refused session, by reason.

The rows are the contract's (``pipeline/contract/actions.py``: the dead-letter reasons and the
gateway's own, ``docs/contract.md``, "Gateway"). An envelope the gateway rejected never reached Kafka,
so its request id left no trace at the edge: a transient rejection (``rate_limited``, ``unavailable``)
may be resent unchanged after backing off; any other rejection spends the request (the fallback
answers it). The hooks are what the app supplies for the actions the SDK cannot take alone; back-off
is exponential with full jitter from ``BACKOFF_MIN_S`` to ``BACKOFF_MAX_S``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from edgestream.pipeline.contract.actions import DeviceAction, device_action

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from edgestream.device.identity import RegionKey

BACKOFF_MIN_S: Final = 0.1
"""First back-off step."""
BACKOFF_MAX_S: Final = 60.0
"""Longest back-off step."""


def rejection_action(reason: str) -> DeviceAction:
    """The action for a ``rejected`` reason (the gateway's, or a dead-letter reason it relays)."""
    return device_action(reason)


def refusal_action(reason: str) -> DeviceAction:
    """The action for a refused session (``reason`` without its ``refused:`` prefix)."""
    return device_action(reason)


@dataclass(frozen=True, slots=True)
class ActionHooks:
    """What the app supplies for the actions the SDK cannot take alone."""

    reprovision: Callable[[str, str], Awaitable[RegionKey | None]] | None = None
    """Fetch the device key for ``(region, reason)`` from the provisioning service; the new key (the
    SDK seals with it from then on, and keeps the old one to open late replies) or None."""
    fix_client: Callable[[str, str], None] | None = None
    """A bug or a setting in this build: ``(reason, detail)``; report it, do not retry."""


class Backoff:
    """Exponential back-off with full jitter, reset by a success."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._step = 0
        self.until_s = 0.0
        """Monotonic time before which the device does not send new requests."""

    def bump(self, now_s: float) -> float:
        """Back off once more from ``now_s``; the time it ends."""
        ceiling = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2**self._step)
        self._step = min(self._step + 1, 32)
        self.until_s = now_s + max(BACKOFF_MIN_S, self._rng.uniform(0, ceiling))
        return self.until_s

    def reset(self) -> None:
        """A send went through: the next back-off starts small again."""
        self._step = 0
        self.until_s = 0.0

    def active(self, now_s: float) -> bool:
        """Whether the device is backing off at ``now_s``."""
        return now_s < self.until_s
