"""The fleet's SDK phones: devices that hold no Kafka credentials and ask through the regional gateways.

A share of the fleet's devices (``FleetSettings.phone_fraction``; none by default) are phones: each
runs the device SDK (``edgestream.device``: ``EdgeClient`` over ``GatewayTransport``) with its own
device key per region, reaches its nearest region's gateway (``edgestream gateway``) and fails over to
the next nearest, takes the signed device catalogue and its fallback model from the gateway, and asks
with ``EdgeClient.infer``: the edge's sealed answer, or its local fallback's when the edge does not
answer in time. Phones send what the other devices send (frames and embeddings, in the same mix).

Each phone has a device class (``PHONE_CLASSES``: the SDK's class, which caps the tier it asks for)
and a link profile (``links.py``: latency, loss, outages, download rate) that its transports go
through, so the SDK's tier choice and fallbacks see what that link does. Classes and links are dealt
in turn, so every (class, link) pair has phones once there are enough. What each pair saw is a
:class:`DeviceRow` of the demo's summary.
"""

from __future__ import annotations

import asyncio
import logging
import random
import statistics
from collections import Counter
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from edgestream.device.answers import Answer, ClientSettings
from edgestream.device.client import EdgeClient
from edgestream.device.gateway_client import GatewayTransport
from edgestream.device.identity import DeviceIdentity, RegionKey
from edgestream.device.tiers import DeviceClass, choose_tier
from edgestream.device.transport import RegionEndpoint
from edgestream.pipeline.errors import EdgestreamError
from edgestream.pipeline.registry import TrustedKeys
from edgestream.pipeline.registry.signing import TRUSTED_KEYS_FILE
from edgestream.pipeline.security.pki import Pki
from edgestream.workers.local.links import PROFILES, LinkTransport, PhoneLink

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from pathlib import Path

    import numpy.typing as npt

    from edgestream.device.transport import Transport
    from edgestream.pipeline.security.keyring import KeyRing
    from edgestream.workers.local.devices import Device
    from edgestream.workers.local.fleet_settings import FleetSettings

log = logging.getLogger(__name__)

PHONE_CLASSES: Final[Mapping[str, DeviceClass]] = MappingProxyType(
    {"low-end-phone": "low", "high-end-phone": "high", "sensor": "low"}
)
"""Each class's SDK device class (``edgestream/device/tiers.py``: the biggest tier it asks for)."""
REPORT_INTERVAL_S: Final = 10.0
"""How often a phone sends its reconciliation report (the SDK's default is 30 s, most of a demo)."""


@dataclass(frozen=True, slots=True)
class PhonePlan:
    """Which device is a phone, of which class, on which link."""

    device: Device
    device_class: str
    link: str


def plan_phones(settings: FleetSettings, devices: Sequence[Device]) -> list[PhonePlan]:
    """The devices that are phones (each with probability ``phone_fraction``, drawn from a generator
    of their own so the rest of the fleet draws as without phones). Classes and links are dealt so
    that the first phones cover every class and every link, and classes x links phones every pair."""
    if settings.phone_fraction <= 0:
        return []
    rng = random.Random(settings.seed + 3)
    chosen = [d for d in devices if rng.random() < settings.phone_fraction]
    classes, links = settings.phone_classes, settings.phone_links
    return [
        PhonePlan(d, classes[i % len(classes)], links[(i + i // len(classes)) % len(links)])
        for i, d in enumerate(chosen)
    ]


@dataclass(slots=True)
class Phone:
    """One running phone."""

    plan: PhonePlan
    link: PhoneLink
    client: EdgeClient
    transports: list[LinkTransport] = field(default_factory=list)
    calls: int = 0
    """``infer`` calls made."""
    tiers: Counter[str] = field(default_factory=Counter)
    """The tier the SDK chose to ask the edge for, per call (``none``: no tier served)."""
    errors: Counter[str] = field(default_factory=Counter)
    """Calls that raised instead of answering, by reason (no verified fallback model)."""
    rtts_ms: list[float] = field(default_factory=list)
    """The SDK's measured round trip at each call (once measured)."""

    @property
    def device_id(self) -> str:
        """The phone's device id."""
        return self.plan.device.device_id


@dataclass(slots=True)
class DeviceRow:
    """What the phones of one (class, link) pair saw, for the demo's summary."""

    device_class: str
    link: str
    phones: int = 0
    calls: int = 0
    """``infer`` calls."""
    edge: int = 0
    """Answered by the edge (a verified sealed reply in time)."""
    fallback: dict[str, int] = field(default_factory=dict)
    """Answered by the local fallback model, by why (``deadline``, ``unavailable``, ...)."""
    errors: dict[str, int] = field(default_factory=dict)
    """Calls that raised, by reason."""
    tiers: dict[str, int] = field(default_factory=dict)
    """The tier the SDK asked the edge for, per call."""
    refused_replies: int = 0
    """Replies the SDK refused to open (another device's, another region's, tampered)."""
    rejected: dict[str, int] = field(default_factory=dict)
    """Envelopes the gateway refused before producing them, by reason (``rate_limited``,
    ``unavailable``: its broker did not take them in time)."""
    duplicates: int = 0
    """Second copies of a reply, dropped (the gateway redelivers unacknowledged replies)."""
    resends: int = 0
    """Envelopes resent unchanged (not confirmed within the resend interval)."""
    reconnects: int = 0
    """Sessions established after the first, over every region."""
    failovers: int = 0
    """Moves to another region."""
    outages: int = 0
    """Link outages."""
    late_agreed: int = 0
    """Edge answers that came after the fallback answered and agreed with it."""
    late_disagreed: int = 0
    """... and disagreed with it (labelling candidates)."""
    rtt_ms: float | None = None
    """Median round trip the SDK measured (the tier choice's input)."""

    @property
    def fallbacks(self) -> int:
        """Calls answered by the fallback."""
        return sum(self.fallback.values())


class Phones:
    """The fleet's phones: started together, asked one call at a time, closed together."""

    def __init__(self, phones: list[Phone], not_started: Counter[str]) -> None:
        self.by_id = {p.device_id: p for p in phones}
        self.not_started = not_started
        """Phones whose SDK did not start, by reason (they are left out)."""

    @classmethod
    async def start(cls, settings: FleetSettings, plans: Sequence[PhonePlan], keyring: KeyRing) -> Phones:
        """Make every planned phone's SDK and start them side by side (connect, sync the clock, verify
        the catalogue, fetch the fallback model); then start their links' outages."""
        endpoints = _endpoints(settings)
        trusted = TrustedKeys.load(settings.home / "registry" / TRUSTED_KEYS_FILE)
        made = [_phone(settings, plan, keyring, endpoints, trusted) for plan in plans]
        started = await asyncio.gather(*(p.client.start() for p in made), return_exceptions=True)
        phones, not_started = [], Counter[str]()
        for phone, outcome in zip(made, started, strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, EdgestreamError):
                    raise outcome
                log.warning("phone %s did not start: %s", phone.device_id, outcome)
                not_started[outcome.reason] += 1
                await phone.client.close()
                continue
            phones.append(phone)
        for phone in phones:
            phone.link.start()
        return cls(phones, not_started)

    async def ask(self, phone: Phone, x: npt.NDArray[Any], deadline_ms: float, kind: str) -> Answer | None:
        """``infer`` on ``phone``; None when it raised (counted in ``phone.errors``)."""
        client = phone.client
        phone.calls += 1
        link = client.link()
        if link.rtt_ms is not None:
            phone.rtts_ms.append(link.rtt_ms)
        try:
            family = client.family_of(kind, None)
            catalogue = client.models.catalogue
            tiers = () if catalogue is None else catalogue.tiers(family)
            entry = choose_tier(tiers, client.settings.device_class, link)
            phone.tiers["none" if entry is None else entry.tier] += 1
            return await client.infer(x, deadline_ms, kind=kind)
        except EdgestreamError as err:
            phone.errors[err.reason] += 1
            return None

    async def close(self) -> None:
        """Stop the outages, send what reconciliation counted, close every session."""
        phones = list(self.by_id.values())
        await asyncio.gather(*(p.link.stop() for p in phones))
        await asyncio.gather(*(p.client.send_reports() for p in phones), return_exceptions=True)
        await asyncio.gather(*(p.client.close() for p in phones), return_exceptions=True)

    def loop_lag_peak_s(self) -> float:
        """The latest any phone's SDK saw the event loop wake past a timer."""
        return max((p.client.loop_lag.peak_s for p in self.by_id.values()), default=0.0)

    def rows(self) -> list[DeviceRow]:
        """What each (class, link) pair saw."""
        return device_rows(self.by_id.values())


def device_rows(phones: Iterable[Phone]) -> list[DeviceRow]:
    """``phones`` added up per (class, link), in the order classes and links first appear."""
    rows: dict[tuple[str, str], DeviceRow] = {}
    rtts: dict[tuple[str, str], list[float]] = {}
    for phone in phones:
        key = (phone.plan.device_class, phone.plan.link)
        row = rows.setdefault(key, DeviceRow(*key))
        stats = phone.client.stats
        row.phones += 1
        row.calls += phone.calls
        row.edge += stats.edge
        row.fallback = dict(Counter(row.fallback) + stats.fallback)
        row.errors = dict(Counter(row.errors) + phone.errors)
        row.tiers = dict(Counter(row.tiers) + phone.tiers)
        row.refused_replies += sum(stats.refused_replies.values())
        row.rejected = dict(Counter(row.rejected) + stats.rejected)
        row.duplicates += stats.duplicates
        row.resends += stats.resends
        row.reconnects += sum(max(0, t.connects - 1) for t in phone.transports)
        row.failovers += phone.client.sessions.failovers
        row.outages += phone.link.outages
        row.late_agreed += stats.agreed
        row.late_disagreed += stats.disagreed
        rtts.setdefault(key, []).extend(phone.rtts_ms)
    for key, row in rows.items():
        row.rtt_ms = statistics.median(rtts[key]) if rtts[key] else None
    return list(rows.values())


def _endpoints(settings: FleetSettings) -> list[RegionEndpoint]:
    missing = [r.name for r in settings.regions if r.name not in settings.gateways]
    if missing:
        raise EdgestreamError(f"phones need a gateway in every region; none given for {', '.join(missing)}")
    ca_file = settings.gateway_ca_file or Pki(settings.tls_root or settings.home / "tls").ca_file
    return [
        RegionEndpoint(r.name, settings.gateways[r.name], r.lat, r.lon, str(ca_file))
        for r in settings.regions
    ]


def _phone(
    settings: FleetSettings,
    plan: PhonePlan,
    keyring: KeyRing,
    endpoints: Sequence[RegionEndpoint],
    trusted: TrustedKeys,
) -> Phone:
    """One phone's SDK: its key in every region (its own region's as enrolled), its link."""
    device = plan.device
    keys = {}
    for region in settings.regions:
        if region.name == device.region:
            keys[region.name] = RegionKey(device.key_id, device.key)
        else:
            key_id = keyring.current_key_id(region.name)
            keys[region.name] = RegionKey(key_id, keyring.device_key(region.name, device.device_id, key_id))
    identity = DeviceIdentity.of(device.device_id, keys)
    link = PhoneLink(PROFILES[plan.link], random.Random(f"{settings.seed}:{device.device_id}"))
    made: list[LinkTransport] = []

    def make_transport(endpoint: RegionEndpoint) -> Transport:
        def gateway() -> Transport:
            key = identity.keys[endpoint.region]
            return GatewayTransport(endpoint, identity.device_id, key.device_key, key.key_id)

        transport = LinkTransport(endpoint.region, gateway, link)
        made.append(transport)
        return transport

    client_settings = ClientSettings(
        device_class=PHONE_CLASSES[plan.device_class],
        location=device.location,
        report_interval_s=REPORT_INTERVAL_S,
        fallback_reserve_ms=settings.fallback_reserve_ms,
        lag_window_s=settings.lag_window_s,
        max_lag_reserve_ms=settings.max_lag_reserve_ms,
    )
    cache = cache_root(settings.home) / device.device_id
    client = EdgeClient(identity, endpoints, make_transport, trusted, cache, client_settings)
    return Phone(plan, link, client, made)


def cache_root(home: Path) -> Path:
    """Where the phones keep their verified catalogues and fallback models."""
    return home / "phones"
