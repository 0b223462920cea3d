"""The topic catalogue: every topic edgestream uses, as data, and the only place topic names are spelled.

Regions are configuration, never code: region-scoped names are built from a pattern
(``edge.{region}.ingest.{kind}``) and a validated region name. Partition counts fit a 2-core
development box and a real deployment alike (3 partitions lets 3 workers share a region's load; more
is a reassignment away). Every retention is paired with a ``segment.ms`` well under it, because Kafka
deletes and compacts whole closed segments only: with the 7-day default segment, a 6-hour retention
on a quiet topic would keep a week of data, and a compacted topic would never compact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, Literal

from edgestream.pipeline.contract.limits import BROKER_MESSAGE_MAX_BYTES
from edgestream.topics.errors import InvalidKind, InvalidRegionName, UnknownTopic

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from edgestream.pipeline.settings import Region

Scope = Literal["region", "cloud", "control"]
CleanupPolicy = Literal["delete", "compact"]
Kind = Literal["embedding", "frame"]

KINDS: Final[tuple[Kind, ...]] = ("embedding", "frame")
"""What devices send: float embeddings or uint8 frames; one ingest topic per kind and region."""

HOUR_MS: Final = 3_600_000
DAY_MS: Final = 24 * HOUR_MS

RETENTION_MS: Final = "retention.ms"
CLEANUP_POLICY: Final = "cleanup.policy"
SEGMENT_MS: Final = "segment.ms"
MAX_MESSAGE_BYTES: Final = "max.message.bytes"
"""Managed on every topic at the broker's default (`BROKER_MESSAGE_MAX_BYTES`): every bound of the
contract (envelopes, outputs, dead letters) is sized to it, so a topic lowered below it is drift that
``edgestream topics create`` and ``topics list`` name (the worker survives it: ``workers/edge/sinks.py``)."""

_REGION_MAX_CHARS: Final = 63
_REGION_RE: Final = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
"""A DNS-label-like name: Kafka-topic-legal, no '.' (the name separator) and no '_' (Kafka metric
names conflate '.' and '_')."""


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One row of the catalogue: a topic (or a family of region topics) and how it is configured."""

    pattern: str
    """Name pattern with ``{region}`` / ``{kind}`` placeholders, e.g. ``edge.{region}.results``."""
    scope: Scope
    """``region`` (one per edge region), ``cloud`` (one, fed by every region) or ``control``."""
    partitions: int
    """Partition count; records are keyed so one key always lands on one partition."""
    retention_ms: int | None
    """How long records are kept; ``None`` keeps them forever (``retention.ms=-1``)."""
    cleanup_policy: CleanupPolicy
    """``delete`` (time-based retention) or ``compact`` (latest value per key)."""
    key: str
    """What the record key is."""
    value: str
    """What the record value is."""
    notes: str
    """Why the topic is configured the way it is."""
    extra_configs: Mapping[str, str] = field(default_factory=dict, hash=False)
    """Further topic configs we manage, beyond ``retention.ms`` and ``cleanup.policy``."""

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise ValueError(f"{self.pattern}: partitions must be >= 1, got {self.partitions}")
        if self.retention_ms is not None and self.retention_ms <= 0:
            raise ValueError(f"{self.pattern}: retention_ms must be > 0 or None, got {self.retention_ms}")
        managed_twice = {RETENTION_MS, CLEANUP_POLICY, MAX_MESSAGE_BYTES} & set(self.extra_configs)
        if managed_twice:
            raise ValueError(f"{self.pattern}: set {sorted(managed_twice)} through the typed fields")
        object.__setattr__(self, "extra_configs", MappingProxyType(dict(self.extra_configs)))

    def topic_configs(self) -> dict[str, str]:
        """Every topic config we manage, as the broker spells it."""
        configs = {
            RETENTION_MS: str(-1 if self.retention_ms is None else self.retention_ms),
            CLEANUP_POLICY: self.cleanup_policy,
            MAX_MESSAGE_BYTES: str(BROKER_MESSAGE_MAX_BYTES),
        }
        configs.update(self.extra_configs)
        return configs


@dataclass(frozen=True, slots=True)
class Topic:
    """A concrete topic: a name and the catalogue entry it comes from."""

    name: str
    """The Kafka topic name."""
    spec: TopicSpec
    """The catalogue entry (partitions, configs, key and value)."""
    region: str | None
    """The region name for region-scoped topics, else ``None``."""
    kind: Kind | None
    """The ingest kind for ingest topics, else ``None``."""


INGEST: Final = TopicSpec(
    pattern="edge.{region}.ingest.{kind}",
    scope="region",
    partitions=3,
    retention_ms=6 * HOUR_MS,
    cleanup_policy="delete",
    key="device id",
    value="sealed envelope",
    notes="partitions by device; short retention: a request is useless after its deadline",
    extra_configs={SEGMENT_MS: str(HOUR_MS)},
)
RESULTS: Final = TopicSpec(
    pattern="edge.{region}.results",
    scope="region",
    partitions=3,
    retention_ms=DAY_MS,
    cleanup_policy="delete",
    key="device id",
    value="result record",
    notes="written in transactions; read_committed consumers",
    extra_configs={SEGMENT_MS: str(6 * HOUR_MS)},
)
REPLIES: Final = TopicSpec(
    pattern="edge.{region}.replies",
    scope="region",
    partitions=3,
    retention_ms=HOUR_MS,
    cleanup_policy="delete",
    key="device id",
    value="result record sealed to its device (fast reply)",
    notes="written at once, outside transactions (at least once); devices read it, backends read "
    "results; a reply is useless after its deadline",
    extra_configs={SEGMENT_MS: str(HOUR_MS // 4)},
)
REPORTS: Final = TopicSpec(
    pattern="edge.{region}.reports",
    scope="region",
    partitions=3,
    retention_ms=DAY_MS,
    cleanup_policy="delete",
    key="device id",
    value="device report (reconciliation, telemetry)",
    notes="what devices report through their gateway; the aggregator reads it; short retention",
    extra_configs={SEGMENT_MS: str(6 * HOUR_MS)},
)
AUDIT: Final = TopicSpec(
    pattern="edge.{region}.audit",
    scope="region",
    partitions=3,
    retention_ms=30 * DAY_MS,
    cleanup_policy="delete",
    key="request id",
    value="audit record, no payload",
    notes="one record per inference; long retention",
)
DLQ: Final = TopicSpec(
    pattern="edge.{region}.dlq",
    scope="region",
    partitions=1,
    retention_ms=7 * DAY_MS,
    cleanup_policy="delete",
    key="original key",
    value="original bytes + error headers",
    notes="reason code, stage, origin topic/partition/offset in headers; low volume, one partition "
    "keeps the region's failures in order for triage and replay",
    extra_configs={SEGMENT_MS: str(DAY_MS)},
)
CLOUD_SUMMARIES: Final = TopicSpec(
    pattern="cloud.summaries",
    scope="cloud",
    partitions=3,
    retention_ms=7 * DAY_MS,
    cleanup_policy="delete",
    key="region/model/version",
    value="window summary",
    notes="one record per worker window",
    extra_configs={SEGMENT_MS: str(DAY_MS)},
)
CLOUD_SAMPLES: Final = TopicSpec(
    pattern="cloud.samples",
    scope="cloud",
    partitions=3,
    retention_ms=7 * DAY_MS,
    cleanup_policy="delete",
    key="hashed device id",
    value="anonymised sample",
    notes="sampled, features only",
    extra_configs={SEGMENT_MS: str(DAY_MS)},
)
CLOUD_LABELS: Final = TopicSpec(
    pattern="cloud.labels",
    scope="cloud",
    partitions=3,
    retention_ms=7 * DAY_MS,
    cleanup_policy="delete",
    key="request id",
    value="ground truth from backends",
    notes="joined to samples",
    extra_configs={SEGMENT_MS: str(DAY_MS)},
)
CONTROL_MODELS: Final = TopicSpec(
    pattern="control.models",
    scope="control",
    partitions=1,
    retention_ms=None,
    cleanup_policy="compact",
    key="model name",
    value="registry state",
    notes="compacted, kept forever; one partition gives every worker one total order to follow",
    extra_configs={SEGMENT_MS: str(HOUR_MS)},
)
CONTROL_WORKERS: Final = TopicSpec(
    pattern="control.workers",
    scope="control",
    partitions=1,
    retention_ms=None,
    cleanup_policy="compact",
    key="worker node id",
    value="registry revisions the worker applied, versions it serves, when",
    notes="compacted; each worker re-reports every few seconds and leaves a tombstone when it stops: "
    "the rollout controller's lag guard across hosts",
    extra_configs={SEGMENT_MS: str(HOUR_MS)},
)

CATALOGUE: Final[tuple[TopicSpec, ...]] = (
    INGEST,
    RESULTS,
    REPLIES,
    REPORTS,
    AUDIT,
    DLQ,
    CLOUD_SUMMARIES,
    CLOUD_SAMPLES,
    CLOUD_LABELS,
    CONTROL_MODELS,
    CONTROL_WORKERS,
)
"""Every catalogue entry, in the order of the topic table in ``docs/design.md``."""

SUMMARIES_TOPIC: Final = CLOUD_SUMMARIES.pattern
SAMPLES_TOPIC: Final = CLOUD_SAMPLES.pattern
LABELS_TOPIC: Final = CLOUD_LABELS.pattern
MODELS_TOPIC: Final = CONTROL_MODELS.pattern
WORKERS_TOPIC: Final = CONTROL_WORKERS.pattern


def validate_region(region: Region | str) -> str:
    """Return the region's name if it can appear in a topic name, else raise `InvalidRegionName`."""
    name = region if isinstance(region, str) else region.name
    if not name:
        raise InvalidRegionName(name, "it is empty")
    if len(name) > _REGION_MAX_CHARS:
        raise InvalidRegionName(name, f"it is longer than {_REGION_MAX_CHARS} characters")
    if re.fullmatch(_REGION_RE, name) is None:
        raise InvalidRegionName(
            name, "use lowercase letters, digits and '-', starting and ending with a letter or digit"
        )
    return name


def _validate_kind(kind: str) -> Kind:
    for known in KINDS:
        if kind == known:
            return known
    raise InvalidKind(kind, KINDS)


def ingest_topic(region: Region | str, kind: str) -> str:
    """``edge.<region>.ingest.<kind>``: where devices of a region send requests of one kind."""
    return INGEST.pattern.format(region=validate_region(region), kind=_validate_kind(kind))


def results_topic(region: Region | str) -> str:
    """``edge.<region>.results``: a region's committed results (what backends read)."""
    return RESULTS.pattern.format(region=validate_region(region))


def replies_topic(region: Region | str) -> str:
    """``edge.<region>.replies``: where a region's devices await their answers (fast replies)."""
    return REPLIES.pattern.format(region=validate_region(region))


def reports_topic(region: Region | str) -> str:
    """``edge.<region>.reports``: what a region's devices report through its gateway."""
    return REPORTS.pattern.format(region=validate_region(region))


def audit_topic(region: Region | str) -> str:
    """``edge.<region>.audit``: one audit record per inference in the region."""
    return AUDIT.pattern.format(region=validate_region(region))


def dlq_topic(region: Region | str) -> str:
    """``edge.<region>.dlq``: the region's dead letters."""
    return DLQ.pattern.format(region=validate_region(region))


def edge_group(region: Region | str) -> str:
    """The consumer group of a region's edge workers (one group per region)."""
    return f"edgestream-edge-{validate_region(region)}"


def ingest_prefix(region: Region | str) -> str:
    """``edge.<region>.ingest.``: every ingest topic of the region, and no other topic, starts with it.

    Regions hold no '.', so no other region's names share the prefix (what a PREFIXED ACL needs).
    """
    return INGEST.pattern.format(region=validate_region(region), kind="")


_GROUP_NAME_RE: Final = r"[A-Za-z0-9_-]{1,100}"

AGGREGATOR_GROUP: Final = "edgestream-aggregator"
"""The aggregator's consumer group, and the start of every aggregator group and transactional id."""


def _group_name(whose: str, name: str) -> str:
    """``name`` when it may end a group name (after a region's prefix), else ValueError naming ``whose``."""
    if re.fullmatch(_GROUP_NAME_RE, name) is None:
        raise ValueError(f"{whose} group name {name!r}: use 1-100 letters, digits, '_' or '-'")
    return name


def device_group_prefix(region: Region | str) -> str:
    """``edgestream-device-<region>.``: the start of every device consumer group of the region.

    '.' ends the region (a region name cannot hold one), so ``eu``'s prefix does not match the groups
    of ``eu-west``, as a '-' would.
    """
    return f"edgestream-device-{validate_region(region)}."


def device_group(region: Region | str, name: str) -> str:
    """``edgestream-device-<region>.<name>``: a consumer group of the region's devices (or gateway)."""
    return f"{device_group_prefix(region)}{_group_name('device', name)}"


def backend_group_prefix(region: Region | str) -> str:
    """``edgestream-backend-<region>.``: the start of every consumer group of the region's backends.

    '.' ends the region, as in `device_group_prefix`, so ``eu``'s prefix misses ``eu-west``'s groups.
    """
    return f"edgestream-backend-{validate_region(region)}."


def backend_group(region: Region | str, name: str) -> str:
    """``edgestream-backend-<region>.<name>``: a consumer group of one of the region's backends."""
    return f"{backend_group_prefix(region)}{_group_name('backend', name)}"


def dlq_replay_group_prefix(region: Region | str) -> str:
    """``edgestream-dlq-replay-<region>-``: the start of the region's DLQ replay groups (and their
    transactional ids), ``edgestream-dlq-replay-<region>-<reason>`` (``workers.ops.dlq.replay_group``)."""
    return f"edgestream-dlq-replay-{validate_region(region)}-"


def region_topics(region: Region | str) -> list[Topic]:
    """Every topic of one region: its ingest topics (one per kind), results, replies, device reports,
    audit and dead letters."""
    name = validate_region(region)
    topics = [Topic(ingest_topic(name, kind), INGEST, name, kind) for kind in KINDS]
    topics += [
        Topic(results_topic(name), RESULTS, name, None),
        Topic(replies_topic(name), REPLIES, name, None),
        Topic(reports_topic(name), REPORTS, name, None),
        Topic(audit_topic(name), AUDIT, name, None),
        Topic(dlq_topic(name), DLQ, name, None),
    ]
    return topics


def shared_topics() -> list[Topic]:
    """The topics every region shares: the cloud topics and the control topic."""
    return [Topic(spec.pattern, spec, None, None) for spec in CATALOGUE if spec.scope != "region"]


def all_topics(regions: Iterable[Region | str]) -> list[Topic]:
    """Every topic of the given regions (each once, in the given order), then the shared topics."""
    names = list(dict.fromkeys(validate_region(region) for region in regions))
    return [topic for name in names for topic in region_topics(name)] + shared_topics()


def _compile(spec: TopicSpec) -> re.Pattern[str]:
    parts = re.split(r"(\{region\}|\{kind\})", spec.pattern)
    placeholders = {"{region}": f"(?P<region>{_REGION_RE})", "{kind}": f"(?P<kind>{'|'.join(KINDS)})"}
    return re.compile("".join(placeholders.get(part, re.escape(part)) for part in parts))


_PARSERS: Final = tuple((spec, _compile(spec)) for spec in CATALOGUE)


def parse_topic(name: str) -> Topic:
    """The catalogue entry, region and kind of a topic name; `UnknownTopic` if no entry makes it."""
    for spec, parser in _PARSERS:
        match = parser.fullmatch(name)
        if match is not None:
            groups = match.groupdict()
            region = groups.get("region")
            kind = groups.get("kind")
            return Topic(name, spec, region, None if kind is None else _validate_kind(kind))
    raise UnknownTopic(name, [spec.pattern for spec in CATALOGUE])


def is_catalogue_topic(name: str) -> bool:
    """Whether a catalogue entry makes this topic name."""
    return any(parser.fullmatch(name) is not None for _, parser in _PARSERS)
