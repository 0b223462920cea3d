"""The honest fleets: one per region, each its own simulated devices and Kafka clients, counting what
they produce, and sending open loop even while the broker throttles them.

The fleet's own send loop waits for the broker's acknowledgements every 256 requests; a producer that a
quota throttles then stalls its loop for the throttle (up to seconds), and every request due meanwhile
is sent, and its capture time taken, only after it: the delay would not show in any round trip, and
with one fleet for both regions it would stall the other region's devices too. ``FloodFleet`` sends on
schedule instead, each request captured when it is due; what librdkafka holds back while throttled
waits in its queue, inside the round trip.

Each fleet also notes every throttle the broker tells its devices' producer (librdkafka's
``throttle_cb``): ``Fleet.run`` makes its ``DeviceProducer`` itself, so while a ``FloodFleet`` runs,
the fleet module's ``DeviceProducer`` is ``ThrottleWatchedProducer``, which hands its throttles to the
fleet whose task made it (a context variable: the two regions' fleets run side by side).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, cast

from bench.flood.settings import FloodSettings
from edgestream.pipeline.security.keyring import KeyRing
from edgestream.pipeline.settings import KafkaSettings, Region
from edgestream.workers.local import fleet as fleet_module
from edgestream.workers.local.devices import Device
from edgestream.workers.local.fleet import Fleet
from edgestream.workers.local.fleet_settings import FleetSettings
from edgestream.workers.local.fleetreport import FleetReport, Progress
from edgestream.workers.local.rdkafka import DeviceProducer

PROGRESS_EVERY_S = 0.25
"""How often the send loop reports its progress."""

Throttles = dict[str, list[tuple[float, float]]]
"""Client id -> each throttle the broker told that producer: ``(unix s served, ms)``, 0 when the
throttling ended."""
_WATCHER: Final[contextvars.ContextVar[Throttles | None]] = contextvars.ContextVar(
    "flood_throttle_watcher", default=None
)
"""Where the producers made in this task note their throttles (the running ``FloodFleet``'s)."""


class ThrottleWatchedProducer(DeviceProducer):
    """A ``DeviceProducer`` that notes each throttle the broker tells it (librdkafka's ``throttle_cb``,
    served by the producer's ``poll`` on the event loop) where its maker's task says."""

    def __init__(self, kafka: KafkaSettings, client_id: str, **options: Any) -> None:
        super().__init__(kafka, client_id, **options)
        self.throttles: list[tuple[float, float]] = []
        watcher = _WATCHER.get()
        if watcher is not None:
            watcher[client_id] = self.throttles
        self._config["throttle_cb"] = self._throttled

    def _throttled(self, event: Any) -> None:
        # ThrottleEvent.throttle_time is in seconds (a float); librdkafka's statistics say ms.
        self.throttles.append((time.time(), float(event.throttle_time) * 1000.0))


_PRODUCER: Final = "DeviceProducer"
"""The name ``Fleet.run`` makes its producers by, in the fleet module."""
_patched = [0]
"""How many ``FloodFleet.run`` are under way (the last to end puts ``DeviceProducer`` back)."""


@contextlib.contextmanager
def _watched_producers(throttles: Throttles) -> Iterator[None]:
    """While the block runs, the fleet module makes ``ThrottleWatchedProducer``, which note their
    throttles in ``throttles`` when made from this task."""
    token = _WATCHER.set(throttles)
    if _patched[0] == 0:
        setattr(fleet_module, _PRODUCER, ThrottleWatchedProducer)
    _patched[0] += 1
    try:
        yield
    finally:
        _patched[0] -= 1
        if _patched[0] == 0:
            setattr(fleet_module, _PRODUCER, DeviceProducer)
        _WATCHER.reset(token)


class _Counted:
    """A device producer that counts the records and bytes (key, value, headers) sent through it."""

    def __init__(self, inner: DeviceProducer, fleet: FloodFleet) -> None:
        self._inner, self._fleet = inner, fleet

    def send(
        self, topic: str, value: bytes, *, key: bytes, headers: Sequence[tuple[str, bytes]] | None = None
    ) -> asyncio.Future[None]:
        self._fleet.records += 1
        self._fleet.record_bytes += len(value) + len(key) + sum(len(k) + len(v) for k, v in headers or ())
        return self._inner.send(topic, value, key=key, headers=headers)


class FloodFleet(Fleet):
    """The fleet, sending open loop (never waiting for acknowledgements) and counting what it sends."""

    def __init__(self, settings: FleetSettings, keyring: KeyRing) -> None:
        super().__init__(settings, keyring)
        self.records = 0
        self.record_bytes = 0
        self.send_failures: Counter[str] = Counter()
        """Sends the broker did not take, by error."""
        self.late_sends = 0
        """Requests sent more than 10 ms after they were due (the fleet's loop was behind)."""
        self.throttles: Throttles = {}
        """Client id -> the throttles the broker told that producer of the fleet's."""

    async def run(
        self,
        on_progress: Callable[[Progress], None] | None = None,
        *,
        until: asyncio.Event | None = None,
        sending: asyncio.Event | None = None,
        sent: asyncio.Event | None = None,
    ) -> FleetReport:
        """``Fleet.run``, its producers noting their throttles in ``throttles``."""
        with _watched_producers(self.throttles):
            return await super().run(on_progress, until=until, sending=sending, sent=sent)

    def producer_throttles(self, region: str) -> list[tuple[float, float]]:
        """The throttles the broker told ``region``'s devices' producer."""
        return self.throttles.get(f"edgestream-fleet-{region}", [])

    async def _send_one(self, producer: DeviceProducer, device: Device) -> asyncio.Future[Any]:
        return await super()._send_one(cast(DeviceProducer, _Counted(producer, self)), device)

    async def _send_all(
        self,
        producers: Mapping[str, DeviceProducer],
        on_progress: Callable[[Progress], None] | None,
        until: asyncio.Event | None,
    ) -> None:
        interval_s = 1.0 / self.settings.rate_per_s
        start_s = time.monotonic()
        end_s = start_s + self.settings.duration_s
        next_s = next_progress_s = start_s
        n = 0
        while next_s < end_s and (until is None or not until.is_set()):
            delay_s = next_s - time.monotonic()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            elif delay_s < -0.01:
                self.late_sends += 1
            device = self.devices[n % len(self.devices)]
            n += 1
            delivery = await self._send_one(producers[device.region], device)
            delivery.add_done_callback(self._delivered)
            next_s += interval_s
            now_s = time.monotonic()
            if on_progress is not None and now_s >= next_progress_s:
                on_progress(self._progress(now_s - start_s))
                next_progress_s = now_s + PROGRESS_EVERY_S
        self.report.send_s = time.monotonic() - start_s

    def _delivered(self, delivery: asyncio.Future[Any]) -> None:
        if not delivery.cancelled() and delivery.exception() is not None:
            self.send_failures[type(delivery.exception()).__name__] += 1

    def mean_record_bytes(self) -> float | None:
        """The mean size of a record the devices sent (key, value, headers)."""
        return self.record_bytes / self.records if self.records else None


SITES = ((0.0, 0.0), (0.0, 120.0))
"""Where the regions' sites are (one fleet per region, so only for the record)."""


def fleet_settings(
    s: FloodSettings,
    region: str,
    index: int,
    kafka: KafkaSettings,
    tls_root: Path | None,
    home: Path,
    send_s: float,
) -> FleetSettings:
    """One region's honest devices: ``rate_per_s``, ``wait_ms`` before a fallback, no bad records, no
    labels."""
    lat, lon = SITES[index % len(SITES)]
    return FleetSettings(
        devices=s.devices_per_region,
        rate_per_s=s.rate_per_s,
        duration_s=send_s,
        frame_fraction=s.frame_fraction,
        bad_fraction=0.0,
        deadline_ms=s.wait_ms,
        drain_s=s.drain_s,
        regions=(Region(name=region, lat=lat, lon=lon),),
        kafka=kafka,
        tls_root=tls_root,
        enrol=False,
        label_fraction=0.0,
        home=home,
        seed=s.seed + index,
    )
