"""The device's sessions: one transport per region, the nearest connected region in use, failover.

The SDK sends through `Sessions.current`: the nearest region (by great-circle distance, ``regions.py``)
whose gateway accepted a session. When its session drops and does not come back within
``timeout_s`` (the transport reconnects on its own), or a send finds it unavailable, the next nearest
that connects becomes current; the nearer ones are tried again every ``retry_nearest_s``. Transports
of regions left behind stay open: the replies their gateways hold still arrive and are answered. A
region whose key was re-provisioned gets a new transport (`replace`): a transport authenticates with
the key it was made with.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from edgestream.device.transport import TransportUnavailable

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from edgestream.device.transport import RegionEndpoint, Transport

log = logging.getLogger(__name__)


class Sessions:
    """Transports by region, nearest first, and which one is in use."""

    def __init__(
        self,
        endpoints: Sequence[RegionEndpoint],
        make_transport: Callable[[RegionEndpoint], Transport],
        on_transport: Callable[[Transport], None],
        *,
        timeout_s: float,
        retry_nearest_s: float,
    ) -> None:
        if not endpoints:
            raise ValueError("a device needs at least one region endpoint")
        self._endpoints = tuple(endpoints)
        self._make = make_transport
        self._on_transport = on_transport
        self._timeout_s = timeout_s
        self._retry_nearest_s = retry_nearest_s
        self._transports: dict[str, Transport] = {}
        self.current: Transport | None = None
        """The transport in use (None: no region connected)."""
        self._lost_since: float | None = None
        self._nearest_tried_s = 0.0
        self.failovers = 0
        """Times the device moved to another region."""
        self.refusals: list[TransportUnavailable] = []
        """Connection failures, most recent last (bounded)."""
        self._lock = asyncio.Lock()
        """Held while connecting: one attempt at a time (two would open two sessions, and the
        gateway keeps one per device: the second replaces the first)."""

    @property
    def transports(self) -> dict[str, Transport]:
        """Every transport made so far, by region."""
        return self._transports

    def _transport(self, endpoint: RegionEndpoint) -> Transport:
        transport = self._transports.get(endpoint.region)
        if transport is None:
            transport = self._make(endpoint)
            self._transports[endpoint.region] = transport
            self._on_transport(transport)
        return transport

    async def _try(self, endpoint: RegionEndpoint) -> Transport | None:
        transport = self._transport(endpoint)
        if transport.connected:
            return transport
        try:
            await transport.connect(self._timeout_s)
        except TransportUnavailable as e:
            self.refusals = [*self.refusals[-31:], e]
            log.info("region %s unavailable: %s", endpoint.region, e.reason)
            return None
        return transport

    async def connect(self, now_s: float, *, skip: str | None = None) -> Transport | None:
        """Use the nearest region that connects (other than ``skip``); None when none does. An
        attempt under way is waited for, and what it connected is used."""
        async with self._lock:
            current = self.current
            if current is not None and current.connected and current.region != skip:
                return current
            return await self._connect(skip)

    async def _connect(self, skip: str | None) -> Transport | None:
        previous = self.current
        for endpoint in self._endpoints:
            if endpoint.region == skip:
                continue
            transport = await self._try(endpoint)
            if transport is not None:
                if previous is not None and previous is not transport:
                    self.failovers += 1
                self.current, self._lost_since = transport, None
                return transport
        if skip is None:
            self.current = None
        return None

    def lost(self, now_s: float) -> None:
        """A send found the current session unavailable: fail over at the next `watch`."""
        self._lost_since = now_s - self._timeout_s

    async def watch(self, now_s: float) -> None:
        """Fail over when the current session stayed down past the timeout; try nearer regions again
        now and then. Nothing while a connection attempt is under way."""
        if self._lock.locked():
            return
        current = self.current
        if current is None:
            await self.connect(now_s)
            return
        if current.connected and self._lost_since is None:
            if (
                current.region != self._endpoints[0].region
                and now_s - self._nearest_tried_s >= self._retry_nearest_s
            ):
                self._nearest_tried_s = now_s
                async with self._lock:
                    await self._back_to_nearer(current)
            return
        if current.connected:
            self._lost_since = None
            return
        if self._lost_since is None:
            self._lost_since = now_s
        if (
            now_s - self._lost_since >= self._timeout_s
            and await self.connect(now_s, skip=current.region) is None
        ):
            self._lost_since = now_s  # nobody else either: keep waiting on this one

    async def _back_to_nearer(self, current: Transport) -> None:
        for endpoint in self._endpoints:
            if endpoint.region == current.region:
                return
            transport = await self._try(endpoint)
            if transport is not None:
                self.current, self._lost_since = transport, None
                self.failovers += 1
                return

    async def replace(self, region: str) -> None:
        """Close ``region``'s transport and forget it: the next connection makes a new one (with the
        device's re-provisioned key); the gateway redelivers what it held for the device."""
        transport = self._transports.pop(region, None)
        if transport is None:
            return
        if self.current is transport:
            self.current = None
        await transport.close()

    async def close(self) -> None:
        """Close every transport."""
        for transport in self._transports.values():
            await transport.close()
