"""Kafka ACLs from the catalogue: the policy as data (pure), and how two sets of bindings differ.

`policy` is every binding edgestream's principals need, built from the catalogue's names, and nothing
else (the broker runs ``allow.everyone.if.no.acl.found=false``). ``broker`` and ``admin`` are super
users. A region's prefixed patterns put a '.' right after the region's name, which holds none, so they
cannot match the names of a region called ``<region>-x``; the one exception is admin's, for the DLQ
replay groups that ``edgestream dlq replay`` names ``...-<region>-<reason>``, and admin is a super
user. No binding is on the cluster: since Kafka 2.8 (KIP-679) WRITE on a topic is enough for an
idempotent producer, so IDEMPOTENT_WRITE is not granted. Applying the policy to a broker is
:mod:`edgestream.topics.acl_admin`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Final

from edgestream.pipeline.security import identities
from edgestream.pipeline.security.identities import (
    ADMIN_PRINCIPAL,
    AGGREGATOR_PRINCIPAL,
    SUPER_USERS,
    kafka_principal,
)
from edgestream.topics.catalogue import (
    AGGREGATOR_GROUP,
    LABELS_TOPIC,
    MODELS_TOPIC,
    SAMPLES_TOPIC,
    SUMMARIES_TOPIC,
    WORKERS_TOPIC,
    audit_topic,
    backend_group_prefix,
    device_group_prefix,
    dlq_replay_group_prefix,
    dlq_topic,
    edge_group,
    ingest_prefix,
    parse_topic,
    replies_topic,
    reports_topic,
    results_topic,
    validate_region,
)
from edgestream.topics.errors import UnknownTopic

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from edgestream.pipeline.settings import Region

log = logging.getLogger(__name__)


# -- the vocabulary (Kafka's wire codes) --------------------------------------------------------------


class ResourceType(IntEnum):
    """What a binding is on (``org.apache.kafka.common.resource.ResourceType``)."""

    UNKNOWN = 0
    ANY = 1
    TOPIC = 2
    GROUP = 3
    CLUSTER = 4
    TRANSACTIONAL_ID = 5
    DELEGATION_TOKEN = 6
    USER = 7


class PatternType(IntEnum):
    """How a binding's resource name matches (``org.apache.kafka.common.resource.PatternType``)."""

    UNKNOWN = 0
    ANY = 1
    MATCH = 2
    LITERAL = 3
    PREFIXED = 4


class Operation(IntEnum):
    """What a binding allows or denies (``org.apache.kafka.common.acl.AclOperation``)."""

    UNKNOWN = 0
    ANY = 1
    ALL = 2
    READ = 3
    WRITE = 4
    CREATE = 5
    DELETE = 6
    ALTER = 7
    DESCRIBE = 8
    CLUSTER_ACTION = 9
    DESCRIBE_CONFIGS = 10
    ALTER_CONFIGS = 11
    IDEMPOTENT_WRITE = 12
    CREATE_TOKENS = 13
    DESCRIBE_TOKENS = 14
    TWO_PHASE_COMMIT = 15


class Permission(IntEnum):
    """Allow or deny (``org.apache.kafka.common.acl.AclPermissionType``)."""

    UNKNOWN = 0
    ANY = 1
    DENY = 2
    ALLOW = 3


TOPIC: Final = ResourceType.TOPIC
GROUP: Final = ResourceType.GROUP
TRANSACTIONAL_ID: Final = ResourceType.TRANSACTIONAL_ID
LITERAL: Final = PatternType.LITERAL
PREFIXED: Final = PatternType.PREFIXED
READ: Final = Operation.READ
WRITE: Final = Operation.WRITE
DESCRIBE: Final = Operation.DESCRIBE
ALLOW: Final = Permission.ALLOW

ANY_HOST: Final = "*"
WILDCARD_PRINCIPAL: Final = kafka_principal("*")
"""A binding for every principal: on the broker it grants (or denies) our principals too."""


@dataclass(frozen=True, slots=True, order=True)
class AclRule:
    """One ACL binding: a principal may (or may not) do one operation on a resource pattern."""

    principal: str
    """Kafka principal, ``User:<name>`` (the broker maps certificate subjects to the names)."""
    resource_type: ResourceType
    """Topic, group, transactional id, cluster."""
    pattern_type: PatternType
    """``LITERAL``: exactly ``resource_name``; ``PREFIXED``: every name starting with it."""
    resource_name: str
    """The name or prefix (``kafka-cluster`` for the cluster)."""
    operation: Operation
    """The operation allowed or denied."""
    permission: Permission = ALLOW
    """``ALLOW`` or ``DENY``."""
    host: str = ANY_HOST
    """Client address the binding applies to; ``*``: any."""

    def __str__(self) -> str:
        return (
            f"{self.principal} {self.permission.name} {self.operation.name} on {self.resource_type.name} "
            f"{self.pattern_type.name.lower()} {self.resource_name!r}"
            + ("" if self.host == ANY_HOST else f" from {self.host}")
        )


# -- the policy --------------------------------------------------------------------------------------

AGGREGATOR: Final = kafka_principal(AGGREGATOR_PRINCIPAL)
"""The cloud aggregator."""
ADMIN: Final = kafka_principal(ADMIN_PRINCIPAL)
"""Operators and their tools (``edgestream dlq replay``); a super user."""


def edge_principal(region: Region | str) -> str:
    """``User:edge-<region>``: the region's edge workers."""
    return kafka_principal(identities.edge_principal(validate_region(region)))


def device_principal(region: Region | str) -> str:
    """``User:device-<region>``: the region's devices and device gateway."""
    return kafka_principal(identities.device_principal(validate_region(region)))


def gateway_principal(region: Region | str) -> str:
    """``User:gateway-<region>``: the region's device gateways."""
    return kafka_principal(identities.gateway_principal(validate_region(region)))


def backend_principal(region: Region | str) -> str:
    """``User:backend-<region>``: the region's backend services."""
    return kafka_principal(identities.backend_principal(validate_region(region)))


def edge_transactional_id_prefix(region: Region | str) -> str:
    """``edgestream-edge-<region>-edge.<region>.ingest.``: the start of every transactional id of the
    region's workers, ``<group>-<ingest topic>-<partition>``
    (`edgestream.workers.edge.sinks.transactional_id`) or, with ``transactions=per_worker``,
    ``<group>-edge.<region>.ingest.worker-<node id>`` (`edgestream.workers.edge.txnsink`).

    ``edgestream-edge-<region>-`` alone would also match the ids of region ``<region>-x``, and a
    principal that may use another region's transactional ids can fence its workers.
    """
    return f"{edge_group(region)}-{ingest_prefix(region)}"


def _grant(
    principal: str, resource_type: ResourceType, pattern_type: PatternType, name: str, *ops: Operation
) -> set[AclRule]:
    return {AclRule(principal, resource_type, pattern_type, name, op) for op in ops}


def _edge_rules(region: str) -> set[AclRule]:
    edge = edge_principal(region)
    return (
        _grant(edge, TOPIC, PREFIXED, ingest_prefix(region), READ, DESCRIBE)
        | _grant(edge, TOPIC, LITERAL, results_topic(region), WRITE, DESCRIBE)
        | _grant(edge, TOPIC, LITERAL, replies_topic(region), WRITE, DESCRIBE)
        | _grant(edge, TOPIC, LITERAL, audit_topic(region), WRITE, DESCRIBE)
        | _grant(edge, TOPIC, LITERAL, dlq_topic(region), WRITE, DESCRIBE)
        | _grant(edge, TOPIC, LITERAL, SUMMARIES_TOPIC, WRITE, DESCRIBE)
        | _grant(edge, TOPIC, LITERAL, SAMPLES_TOPIC, WRITE, DESCRIBE)
        | _grant(edge, TOPIC, LITERAL, MODELS_TOPIC, READ, DESCRIBE)  # follows the registry
        | _grant(edge, TOPIC, LITERAL, WORKERS_TOPIC, WRITE, DESCRIBE)  # reports what it applied
        | _grant(edge, GROUP, LITERAL, edge_group(region), READ)
        | _grant(edge, TRANSACTIONAL_ID, PREFIXED, edge_transactional_id_prefix(region), WRITE, DESCRIBE)
        # No IDEMPOTENT_WRITE on the cluster: WRITE on any topic lets the at-least-once (idempotent,
        # not transactional) producer get a producer id since Kafka 2.8 (KIP-679).
    )


def _device_rules(region: str) -> set[AclRule]:
    device = device_principal(region)
    return (
        _grant(device, TOPIC, PREFIXED, ingest_prefix(region), WRITE, DESCRIBE)
        | _grant(device, TOPIC, LITERAL, results_topic(region), READ, DESCRIBE)
        | _grant(device, TOPIC, LITERAL, replies_topic(region), READ, DESCRIBE)
        | _grant(device, GROUP, PREFIXED, device_group_prefix(region), READ)
    )


def _gateway_rules(region: str) -> set[AclRule]:
    # The gateway produces what its devices send (envelopes, reports) and reads their sealed replies
    # with no group (it assigns every partition and starts from the end); it never reads results.
    gateway = gateway_principal(region)
    return (
        _grant(gateway, TOPIC, PREFIXED, ingest_prefix(region), WRITE, DESCRIBE)
        | _grant(gateway, TOPIC, LITERAL, reports_topic(region), WRITE, DESCRIBE)
        | _grant(gateway, TOPIC, LITERAL, replies_topic(region), READ, DESCRIBE)
    )


def _backend_rules(region: str) -> set[AclRule]:
    # A backend reads what the region answered (committed results) and what it refused (dead letters),
    # in groups of its own, and writes ground truth; it never writes ingest, results or replies.
    backend = backend_principal(region)
    return (
        _grant(backend, TOPIC, LITERAL, results_topic(region), READ, DESCRIBE)
        | _grant(backend, TOPIC, LITERAL, dlq_topic(region), READ, DESCRIBE)
        | _grant(backend, GROUP, PREFIXED, backend_group_prefix(region), READ)
        | _grant(backend, TOPIC, LITERAL, LABELS_TOPIC, WRITE, DESCRIBE)
    )


def _aggregator_region_rules(region: str) -> set[AclRule]:
    # Device reports (reconciliation of fallback and edge answers) feed the cloud summaries.
    return _grant(AGGREGATOR, TOPIC, LITERAL, reports_topic(region), READ, DESCRIBE)


def _admin_rules(region: str) -> set[AclRule]:
    # The DLQ replay tool runs as admin (a super user: these record the intent, they grant nothing new).
    return _grant(ADMIN, GROUP, PREFIXED, dlq_replay_group_prefix(region), READ) | _grant(
        ADMIN, TOPIC, LITERAL, dlq_topic(region), READ
    )


def _aggregator_rules() -> set[AclRule]:
    return (
        _grant(AGGREGATOR, TOPIC, LITERAL, SUMMARIES_TOPIC, READ, DESCRIBE)
        | _grant(AGGREGATOR, TOPIC, LITERAL, SAMPLES_TOPIC, READ, DESCRIBE)
        | _grant(AGGREGATOR, TOPIC, LITERAL, LABELS_TOPIC, READ, DESCRIBE)
        | _grant(AGGREGATOR, GROUP, PREFIXED, AGGREGATOR_GROUP, READ)
        # Drift references. Read only: the registry's publisher (admin, a super user) is the one
        # principal that writes control.models, and every state it writes is signed.
        | _grant(AGGREGATOR, TOPIC, LITERAL, MODELS_TOPIC, READ, DESCRIBE)
        | _grant(AGGREGATOR, TRANSACTIONAL_ID, PREFIXED, AGGREGATOR_GROUP, WRITE, DESCRIBE)
        # faust's own topics (table changelogs, re-keyed streams, its assignor), named <app id>-...
        | _grant(AGGREGATOR, TOPIC, PREFIXED, AGGREGATOR_GROUP, Operation.CREATE, READ, WRITE, DESCRIBE)
    )


def _region_names(regions: Iterable[Region | str]) -> list[str]:
    return list(dict.fromkeys(validate_region(region) for region in regions))


def policy(regions: Sequence[Region | str]) -> list[AclRule]:
    """Every binding edgestream needs for the regions, sorted, each once. Pure."""
    rules = _aggregator_rules()
    for region in _region_names(regions):
        rules |= _edge_rules(region) | _device_rules(region) | _backend_rules(region) | _admin_rules(region)
        rules |= _gateway_rules(region) | _aggregator_region_rules(region)
    return sorted(rules)


def principals(regions: Sequence[Region | str]) -> list[str]:
    """The principals `policy` names for the regions, sorted."""
    return sorted({rule.principal for rule in policy(regions)})


@dataclass(frozen=True, slots=True)
class AclDiff:
    """How the broker's bindings differ from a policy."""

    missing: list[AclRule]
    """In the policy, not on the broker."""
    extra: list[AclRule]
    """On the broker for a managed principal (or for every principal, ``User:*``), not in the policy;
    see `compare`."""

    @property
    def matches(self) -> bool:
        """True when nothing is missing and nothing is extra."""
        return not self.missing and not self.extra


def compare(wanted: Iterable[AclRule], actual: Iterable[AclRule]) -> AclDiff:
    """The difference between a policy and the broker's bindings.

    Extra bindings count for the policy's principals, and for ``User:*`` (which reaches them too), but
    not for super users: their bindings grant nothing, and admin's are per region, so the policy of
    some regions would call those of the others extra. For the same reason a binding on another
    region's topic is not extra (the aggregator's on each region's reports).
    """
    wanted_set, actual_set = set(wanted), set(actual)
    managed = {rule.principal for rule in wanted_set} - set(SUPER_USERS) | {WILDCARD_PRINCIPAL}
    regions = {_region_of(rule) for rule in wanted_set} - {None}
    return AclDiff(
        missing=sorted(wanted_set - actual_set),
        extra=sorted(
            r for r in actual_set - wanted_set if r.principal in managed and _region_of(r) in regions | {None}
        ),
    )


def _region_of(rule: AclRule) -> str | None:
    """The region of a binding's topic (``None``: not one region's topic). A principal every region
    shares (the aggregator reads each region's reports) has bindings on other regions' topics, which
    are not extra to the policy of these regions."""
    if rule.resource_type is not TOPIC or rule.pattern_type is not LITERAL:
        return None
    try:
        return parse_topic(rule.resource_name).region
    except UnknownTopic:
        return None
