"""Errors of the topic catalogue, region routing and topic admin.

Each carries its typed fields and a stable ``reason`` code; messages are built from those fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgestream.pipeline.errors import BrokerError, ConfigError, EdgestreamError

if TYPE_CHECKING:
    from collections.abc import Sequence


class InvalidRegionName(ConfigError):
    """A region name cannot appear in a topic name: only lowercase letters, digits and '-' are allowed."""

    reason = "bad_region"

    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"invalid region name {name!r}: {why}")
        self.name = name
        self.why = why


class InvalidKind(ConfigError):
    """An ingest kind that the catalogue does not know."""

    reason = "bad_kind"

    def __init__(self, kind: str, known: Sequence[str]) -> None:
        super().__init__(f"unknown ingest kind {kind!r}; known kinds: {', '.join(known)}")
        self.kind = kind
        self.known = tuple(known)


class UnknownTopic(EdgestreamError):
    """A topic name that no catalogue entry produces."""

    reason = "unknown_topic"

    def __init__(self, name: str, patterns: Sequence[str]) -> None:
        super().__init__(f"topic {name!r} is not in the catalogue; known patterns: {', '.join(patterns)}")
        self.name = name
        self.patterns = tuple(patterns)


class RoutingError(EdgestreamError):
    """A device cannot be routed: no regions, duplicate regions, or an empty device id."""

    reason = "routing"


class InvalidLocation(RoutingError):
    """A (lat, lon) that is not a finite point on Earth in degrees."""

    reason = "bad_location"

    def __init__(self, lat: float, lon: float) -> None:
        super().__init__(
            f"invalid location ({lat!r}, {lon!r}): latitude must be in [-90, 90] and longitude in "
            "[-180, 180] degrees, both finite"
        )
        self.lat = lat
        self.lon = lon


@dataclass(frozen=True, slots=True)
class SettingDifference:
    """One setting of one existing topic that differs from the catalogue."""

    topic: str
    """The topic's name."""
    setting: str
    """``partitions`` or a topic config name such as ``retention.ms``."""
    expected: str
    """The catalogue's value."""
    actual: str
    """The broker's value; ``<unset>`` when the broker did not report the config."""

    def __str__(self) -> str:
        return f"{self.topic}: {self.setting} expected {self.expected}, broker has {self.actual}"


class TopicConfigMismatch(EdgestreamError):
    """Existing topics differ from the catalogue; every topic and every differing setting is named."""

    reason = "topic_config_mismatch"

    def __init__(self, differences: Sequence[SettingDifference]) -> None:
        self.differences = tuple(differences)
        self.topics = tuple(sorted({d.topic for d in self.differences}))
        lines = "\n".join(f"  {d}" for d in self.differences)
        super().__init__(
            f"{len(self.topics)} existing topic(s) differ from the catalogue "
            f"({', '.join(self.topics)}):\n{lines}"
        )


class TopicsNotFound(EdgestreamError):
    """Catalogue topics that do not exist on the broker."""

    reason = "topic_not_found"

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__(f"topic(s) not found on the broker: {', '.join(names)}")
        self.names = tuple(names)


class BrokerUnavailable(BrokerError):
    """No broker answered at the bootstrap address."""

    reason = "broker_unavailable"
    retriable = True

    def __init__(self, bootstrap_servers: str, detail: str) -> None:
        super().__init__(f"no Kafka broker reachable at {bootstrap_servers}: {detail}")
        self.bootstrap_servers = bootstrap_servers
        self.detail = detail


class TopicAdminError(BrokerError):
    """The broker refused or failed an admin request."""

    reason = "topic_admin"

    def __init__(self, operation: str, detail: str) -> None:
        super().__init__(f"{operation} failed: {detail}")
        self.operation = operation
        self.detail = detail
