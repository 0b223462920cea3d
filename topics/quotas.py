"""Kafka client quotas for the devices' principals: the policy as data (pure), and how two sets differ.

Every Kafka-native device of a region connects as one principal, ``User:device-<region>`` (its
certificate's OU), so nothing but the broker's own limits bounds what one of them produces: a device
whose certificate leaked, or whose firmware loops, can write as fast as the broker takes records, and
the region's edge worker must read every one of them (each is dead-lettered, ``rate_limited`` past the
device's rate, but only after it was fetched, opened and checked). A quota on the principal bounds the
region's Kafka-native devices together: the broker delays its answers to them (and stops reading from
their connections) once they pass it, so a flood costs the broker, the worker and the other regions no
more than the quota.

Kafka applies one quota to a connection, the most specific that matches (user and client id, then
user, then the defaults); edgestream sets the user's, so every device of the region shares it, and a
flood slows its own region's Kafka-native devices once it fills the quota. Devices that connect
through a gateway are not counted: the gateway has its own principal and bounds each device itself
(``docs/gateway.md``). Per-device quotas would need per-device principals (one certificate OU each).
Applying the policy to a broker is :mod:`edgestream.topics.quota_admin`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Final

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgestream.pipeline.security import identities
from edgestream.topics.catalogue import validate_region

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from edgestream.pipeline.settings import Region


class QuotaKey(StrEnum):
    """The client quota configurations edgestream manages (Kafka's names)."""

    PRODUCER_BYTE_RATE = "producer_byte_rate"
    """Bytes per second the entity's clients may produce, all partitions together."""
    CONSUMER_BYTE_RATE = "consumer_byte_rate"
    """Bytes per second the entity's clients may fetch."""
    REQUEST_PERCENTAGE = "request_percentage"
    """Share of one broker thread's time (network and I/O threads) the entity's requests may use, in
    percent per quota window: 100 is one thread's whole time."""


USER: Final = "user"
"""Kafka's quota entity type for a principal's name (the part after ``User:``)."""

MAX_BYTE_RATE: Final = 2**31 - 1
"""The largest byte rate: whole bytes (Kafka refuses a fraction) that Strimzi's 32-bit field holds."""

Values = dict[QuotaKey, float]
"""An entity's quota values by key."""


@dataclass(frozen=True, order=True, slots=True)
class QuotaEntity:
    """A quota entity edgestream manages: one principal by name (``device-<region>``), no client id."""

    user: str
    """The principal's name without ``User:``, as Kafka's quota entity names it."""

    def __str__(self) -> str:
        return f"user={self.user}"


class DeviceQuotas(BaseSettings):
    """The quota on each region's device principal (``EDGESTREAM_DEVICE_QUOTA_*``; ``none`` in the
    environment is None); None: no quota of that kind (the key is removed from the principal).

    The default bounds what a region's Kafka-native devices produce together at 4 MiB/s: above what one
    edge worker on the 2-core reference box serves of honest requests (about 6,500 a second of the
    bench's ~300-byte envelopes), so a region that one worker can serve is not throttled, while one
    flooding device that pushed 83 MB/s without a quota gets 3.4 MB/s (``bench/flood``). Size it to
    what the region's workers read: above it a sustained flood still builds a backlog the region
    waits behind (at 4 MiB/s it did on that box; at 1.9 MB/s it did not), and below what its honest
    devices produce it delays every one of them. Fetch and broker time are not bounded by default:
    every device reads its own partition of the replies topic, so the fetched bytes grow with the
    number of devices, and the honest share of broker time is not measured.
    """

    model_config = SettingsConfigDict(
        env_prefix="EDGESTREAM_DEVICE_QUOTA_", frozen=True, extra="ignore", env_parse_none_str="none"
    )

    producer_byte_rate: int | None = Field(default=4 * 1024 * 1024, gt=0, le=MAX_BYTE_RATE)
    """Bytes per second the region's devices may produce, together (4 MiB/s)."""
    consumer_byte_rate: int | None = Field(default=None, gt=0, le=MAX_BYTE_RATE)
    """Bytes per second the region's devices may fetch (replies and results), together (none)."""
    request_percentage: float | None = Field(default=None, gt=0)
    """Share of one broker thread's time the region's devices' requests may use, together (none)."""

    @classmethod
    def none(cls) -> DeviceQuotas:
        """No quota of any kind: applying it removes the devices' quotas."""
        return cls(producer_byte_rate=None, consumer_byte_rate=None, request_percentage=None)

    def values(self) -> Values:
        """The keys set, with their values."""
        chosen = {
            QuotaKey.PRODUCER_BYTE_RATE: self.producer_byte_rate,
            QuotaKey.CONSUMER_BYTE_RATE: self.consumer_byte_rate,
            QuotaKey.REQUEST_PERCENTAGE: self.request_percentage,
        }
        return {key: float(value) for key, value in chosen.items() if value is not None}


def device_entity(region: Region | str) -> QuotaEntity:
    """The quota entity of ``region``'s devices: ``user=device-<region>``."""
    return QuotaEntity(identities.device_principal(validate_region(region)))


def policy(regions: Sequence[Region | str], quotas: DeviceQuotas) -> dict[QuotaEntity, Values]:
    """The managed entities of the regions and the values each should have (empty: none). Pure."""
    values = quotas.values()
    return {device_entity(region): dict(values) for region in regions}


@dataclass(frozen=True, slots=True)
class QuotaChange:
    """One key of one entity that differs from the policy."""

    entity: QuotaEntity
    """Whose quota."""
    key: QuotaKey
    """Which quota."""
    actual: float | None
    """On the broker (None: not set)."""
    wanted: float | None
    """In the policy (None: not to be set)."""

    def __str__(self) -> str:
        before, after = shown(self.key, self.actual), shown(self.key, self.wanted)
        return f"{self.entity} {self.key.value}: {before} -> {after}"


def shown(key: QuotaKey, value: float | None) -> str:
    """A quota value for people: ``16 MiB/s``, ``2,048 B/s``, ``50%``; ``unset`` for None."""
    if value is None:
        return "unset"
    if key is QuotaKey.REQUEST_PERCENTAGE:
        return f"{value:g}%"
    return f"{value / 1024 / 1024:g} MiB/s" if value >= 1024 * 1024 else f"{value:,.0f} B/s"


def compare(
    wanted: Mapping[QuotaEntity, Mapping[QuotaKey, float]],
    actual: Mapping[QuotaEntity, Mapping[QuotaKey, float]],
) -> list[QuotaChange]:
    """Every key of a managed entity (those ``wanted`` names) whose value on the broker differs, sorted;
    other entities, and keys edgestream does not manage, are not compared."""
    changes: list[QuotaChange] = []
    for entity in sorted(wanted):
        want, have = wanted[entity], actual.get(entity, {})
        for key in QuotaKey:
            if want.get(key) != have.get(key):
                changes.append(QuotaChange(entity, key, have.get(key), want.get(key)))
    return changes


def entities(regions: Iterable[Region | str]) -> list[QuotaEntity]:
    """The entities the policy of the regions manages, sorted."""
    return sorted({device_entity(region) for region in regions})
