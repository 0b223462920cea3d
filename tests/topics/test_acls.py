"""ACLs from the catalogue: the pure policy, then create / describe / prune / check on a real broker with
the StandardAuthorizer, and the policy enforced on principals that log in over SASL/PLAIN.

This module starts its own brokers, one at a time and never beside another of its own: first, for one
test, one without an authorizer (the suite's session broker has one); then `acl_broker`, with
``allow.everyone.if.no.acl.found=false`` as in production, ``User:ANONYMOUS`` (its PLAINTEXT listener:
the tests' admin, and the broker itself) as the super user, and a SASL_PLAINTEXT listener whose PLAIN
users are the principals of `ENFORCED` and of `NEIGHBOUR`, whose name starts with ``ENFORCED + "-"``
(the case a '-'-ended prefix gets wrong). Each other test works on its own region (``t`` + 8 hex
digits), so the principals it manages are its own.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import TopicAuthorizationFailedError, TransactionalIdAuthorizationFailed
from typer.testing import CliRunner, Result

from edgestream.cli import app
from edgestream.pipeline.errors import BrokerError
from edgestream.pipeline.security.identities import SUPER_USERS
from edgestream.pipeline.settings import DEFAULT_REGIONS, KafkaSettings
from edgestream.topics.acl_admin import (
    AclAdminError,
    AclPermissionDenied,
    AuthorizerDisabled,
    apply_policy,
    check_policy,
    create_acls,
    delete_acls,
    describe_acls,
)
from edgestream.topics.acl_admin import _raise_for as _raise_for  # the error mapping, without a broker
from edgestream.topics.acls import (
    ADMIN,
    AGGREGATOR,
    DESCRIBE,
    GROUP,
    LITERAL,
    PREFIXED,
    READ,
    TOPIC,
    TRANSACTIONAL_ID,
    WILDCARD_PRINCIPAL,
    WRITE,
    AclRule,
    Operation,
    PatternType,
    Permission,
    ResourceType,
    backend_principal,
    compare,
    device_principal,
    edge_principal,
    gateway_principal,
    policy,
    principals,
)
from edgestream.topics.admin import ensure_topics
from edgestream.topics.catalogue import (
    AGGREGATOR_GROUP,
    INGEST,
    KINDS,
    LABELS_TOPIC,
    MODELS_TOPIC,
    REPORTS,
    SAMPLES_TOPIC,
    SUMMARIES_TOPIC,
    WORKERS_TOPIC,
    all_topics,
    audit_topic,
    backend_group,
    device_group,
    dlq_replay_group_prefix,
    dlq_topic,
    edge_group,
    ingest_topic,
    parse_topic,
    replies_topic,
    reports_topic,
    results_topic,
)
from edgestream.topics.errors import InvalidRegionName
from edgestream.workers.edge.sinks import transactional_id
from edgestream.workers.local.broker.config import free_port
from edgestream.workers.local.broker.process import LocalBroker
from edgestream.workers.local.broker.settings import BrokerSettings
from edgestream.workers.ops.dlq import replay_group

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from pathlib import Path

broker = pytest.mark.broker

REGIONS = [r.name for r in DEFAULT_REGIONS]
ENFORCED = f"t{uuid.uuid4().hex[:8]}"
"""The region whose principals log in over SASL/PLAIN in the enforcement test."""
NEIGHBOUR = f"{ENFORCED}-x"
"""A region whose names start with ``<ENFORCED>-``."""
PASSWORD = "pw"
IMPLIES_DESCRIBE = {Operation.READ, Operation.WRITE, Operation.DELETE, Operation.ALTER}
"""Kafka lets these imply DESCRIBE on the same resource."""

# -- Kafka's matching, to check the policy by what it grants -------------------------------------------


def _matches(rule: AclRule, resource_type: ResourceType, name: str) -> bool:
    if rule.resource_type is not resource_type:
        return False
    if rule.pattern_type is PatternType.PREFIXED:
        return name.startswith(rule.resource_name)
    return rule.resource_name in (name, "*")


def allowed(
    rules: Iterable[AclRule], principal: str, resource_type: ResourceType, name: str
) -> set[Operation]:
    """The operations the rules allow the principal on one resource (no DENY in our policy)."""
    ops = {
        r.operation
        for r in rules
        if r.principal in (principal, WILDCARD_PRINCIPAL)
        and r.permission is Permission.ALLOW
        and _matches(r, resource_type, name)
    }
    if ops & IMPLIES_DESCRIBE:
        ops.add(Operation.DESCRIBE)
    return ops


def _txn_ids(region: str) -> list[str]:
    """Every transactional id the region's workers use (`TransactionalSink`, one per ingest partition)."""
    return [
        transactional_id(edge_group(region), TopicPartition(ingest_topic(region, kind), p))
        for kind in KINDS
        for p in range(INGEST.partitions)
    ]


# -- the pure policy --------------------------------------------------------------------------------------

# The policy for eu-west, spelled out once to check `policy` against the design line by line.
EU_WEST_POLICY = {
    # edge-eu-west: its ingest topics in, its outputs and the cloud topics out, its group, its txn ids
    ("User:edge-eu-west", "TOPIC", "PREFIXED", "edge.eu-west.ingest.", "READ"),
    ("User:edge-eu-west", "TOPIC", "PREFIXED", "edge.eu-west.ingest.", "DESCRIBE"),
    ("User:edge-eu-west", "TOPIC", "LITERAL", "edge.eu-west.results", "WRITE"),
    ("User:edge-eu-west", "TOPIC", "LITERAL", "edge.eu-west.results", "DESCRIBE"),
    ("User:edge-eu-west", "TOPIC", "LITERAL", "edge.eu-west.replies", "WRITE"),
    ("User:edge-eu-west", "TOPIC", "LITERAL", "edge.eu-west.replies", "DESCRIBE"),
    ("User:edge-eu-west", "TOPIC", "LITERAL", "edge.eu-west.audit", "WRITE"),
    ("User:edge-eu-west", "TOPIC", "LITERAL", "edge.eu-west.audit", "DESCRIBE"),
    ("User:edge-eu-west", "TOPIC", "LITERAL", "edge.eu-west.dlq", "WRITE"),
    ("User:edge-eu-west", "TOPIC", "LITERAL", "edge.eu-west.dlq", "DESCRIBE"),
    ("User:edge-eu-west", "TOPIC", "LITERAL", "cloud.summaries", "WRITE"),
    ("User:edge-eu-west", "TOPIC", "LITERAL", "cloud.summaries", "DESCRIBE"),
    ("User:edge-eu-west", "TOPIC", "LITERAL", "cloud.samples", "WRITE"),
    ("User:edge-eu-west", "TOPIC", "LITERAL", "cloud.samples", "DESCRIBE"),
    ("User:edge-eu-west", "TOPIC", "LITERAL", "control.models", "READ"),
    ("User:edge-eu-west", "TOPIC", "LITERAL", "control.models", "DESCRIBE"),
    ("User:edge-eu-west", "TOPIC", "LITERAL", "control.workers", "WRITE"),
    ("User:edge-eu-west", "TOPIC", "LITERAL", "control.workers", "DESCRIBE"),
    ("User:edge-eu-west", "GROUP", "LITERAL", "edgestream-edge-eu-west", "READ"),
    (
        "User:edge-eu-west",
        "TRANSACTIONAL_ID",
        "PREFIXED",
        "edgestream-edge-eu-west-edge.eu-west.ingest.",
        "WRITE",
    ),
    (
        "User:edge-eu-west",
        "TRANSACTIONAL_ID",
        "PREFIXED",
        "edgestream-edge-eu-west-edge.eu-west.ingest.",
        "DESCRIBE",
    ),
    # device-eu-west: ingest out, results and replies in, its groups
    ("User:device-eu-west", "TOPIC", "PREFIXED", "edge.eu-west.ingest.", "WRITE"),
    ("User:device-eu-west", "TOPIC", "PREFIXED", "edge.eu-west.ingest.", "DESCRIBE"),
    ("User:device-eu-west", "TOPIC", "LITERAL", "edge.eu-west.results", "READ"),
    ("User:device-eu-west", "TOPIC", "LITERAL", "edge.eu-west.results", "DESCRIBE"),
    ("User:device-eu-west", "TOPIC", "LITERAL", "edge.eu-west.replies", "READ"),
    ("User:device-eu-west", "TOPIC", "LITERAL", "edge.eu-west.replies", "DESCRIBE"),
    ("User:device-eu-west", "GROUP", "PREFIXED", "edgestream-device-eu-west.", "READ"),
    # backend-eu-west: results and dead letters in, in its own groups; labels out
    ("User:backend-eu-west", "TOPIC", "LITERAL", "edge.eu-west.results", "READ"),
    ("User:backend-eu-west", "TOPIC", "LITERAL", "edge.eu-west.results", "DESCRIBE"),
    ("User:backend-eu-west", "TOPIC", "LITERAL", "edge.eu-west.dlq", "READ"),
    ("User:backend-eu-west", "TOPIC", "LITERAL", "edge.eu-west.dlq", "DESCRIBE"),
    ("User:backend-eu-west", "GROUP", "PREFIXED", "edgestream-backend-eu-west.", "READ"),
    ("User:backend-eu-west", "TOPIC", "LITERAL", "cloud.labels", "WRITE"),
    ("User:backend-eu-west", "TOPIC", "LITERAL", "cloud.labels", "DESCRIBE"),
    # gateway: what its devices send in, their sealed replies out; no group
    ("User:gateway-eu-west", "TOPIC", "PREFIXED", "edge.eu-west.ingest.", "WRITE"),
    ("User:gateway-eu-west", "TOPIC", "PREFIXED", "edge.eu-west.ingest.", "DESCRIBE"),
    ("User:gateway-eu-west", "TOPIC", "LITERAL", "edge.eu-west.reports", "WRITE"),
    ("User:gateway-eu-west", "TOPIC", "LITERAL", "edge.eu-west.reports", "DESCRIBE"),
    ("User:gateway-eu-west", "TOPIC", "LITERAL", "edge.eu-west.replies", "READ"),
    ("User:gateway-eu-west", "TOPIC", "LITERAL", "edge.eu-west.replies", "DESCRIBE"),
    # admin (a super user): the DLQ replay tool's groups and the DLQ
    ("User:admin", "GROUP", "PREFIXED", "edgestream-dlq-replay-eu-west-", "READ"),
    ("User:admin", "TOPIC", "LITERAL", "edge.eu-west.dlq", "READ"),
    # aggregator: the cloud topics and the regions' device reports in, the registry out
    ("User:aggregator", "TOPIC", "LITERAL", "edge.eu-west.reports", "READ"),
    ("User:aggregator", "TOPIC", "LITERAL", "edge.eu-west.reports", "DESCRIBE"),
    ("User:aggregator", "TOPIC", "LITERAL", "cloud.summaries", "READ"),
    ("User:aggregator", "TOPIC", "LITERAL", "cloud.summaries", "DESCRIBE"),
    ("User:aggregator", "TOPIC", "LITERAL", "cloud.samples", "READ"),
    ("User:aggregator", "TOPIC", "LITERAL", "cloud.samples", "DESCRIBE"),
    ("User:aggregator", "TOPIC", "LITERAL", "cloud.labels", "READ"),
    ("User:aggregator", "TOPIC", "LITERAL", "cloud.labels", "DESCRIBE"),
    ("User:aggregator", "GROUP", "PREFIXED", "edgestream-aggregator", "READ"),
    ("User:aggregator", "TOPIC", "LITERAL", "control.models", "READ"),
    ("User:aggregator", "TOPIC", "LITERAL", "control.models", "DESCRIBE"),
    ("User:aggregator", "TRANSACTIONAL_ID", "PREFIXED", "edgestream-aggregator", "WRITE"),
    ("User:aggregator", "TRANSACTIONAL_ID", "PREFIXED", "edgestream-aggregator", "DESCRIBE"),
    # faust's own topics: table changelogs, re-keyed streams, its assignor (<app id>-...)
    ("User:aggregator", "TOPIC", "PREFIXED", "edgestream-aggregator", "CREATE"),
    ("User:aggregator", "TOPIC", "PREFIXED", "edgestream-aggregator", "READ"),
    ("User:aggregator", "TOPIC", "PREFIXED", "edgestream-aggregator", "WRITE"),
    ("User:aggregator", "TOPIC", "PREFIXED", "edgestream-aggregator", "DESCRIBE"),
}


def test_policy_for_one_region_is_the_design_table() -> None:
    rules = policy(["eu-west"])
    spelled = {
        (r.principal, r.resource_type.name, r.pattern_type.name, r.resource_name, r.operation.name)
        for r in rules
    }
    assert spelled == EU_WEST_POLICY
    assert all(r.permission is Permission.ALLOW and r.host == "*" for r in rules)


def test_policy_is_sorted_unique_and_deterministic() -> None:
    rules = policy(REGIONS)
    assert rules == sorted(rules)
    assert len(rules) == len(set(rules))
    assert rules == policy(list(reversed(REGIONS))) == policy([*REGIONS, *REGIONS])
    # per region: edge 21, device 7, backend 7, admin 2, gateway 6, aggregator 2; aggregator 15
    assert len(rules) == 3 * 45 + 15
    assert policy([]) == sorted(
        r for r in rules if r.principal == AGGREGATOR and "edge." not in r.resource_name
    )


def test_policy_rejects_a_bad_region() -> None:
    with pytest.raises(InvalidRegionName):
        policy(["EU_West"])


def test_principals() -> None:
    assert principals(["eu-west"]) == sorted(
        [
            ADMIN,
            AGGREGATOR,
            "User:backend-eu-west",
            "User:device-eu-west",
            "User:edge-eu-west",
            "User:gateway-eu-west",
        ]
    )
    assert gateway_principal("eu-west") == "User:gateway-eu-west"
    assert backend_principal("eu-west") == "User:backend-eu-west"
    assert edge_principal("eu-west") == "User:edge-eu-west"
    assert device_principal("us-east") == "User:device-us-east"
    assert not {rule.principal for rule in policy(REGIONS)} & {"User:broker"}
    assert ADMIN in SUPER_USERS


@pytest.mark.parametrize("region", REGIONS)
def test_edge_topics(region: str) -> None:
    rules = policy(REGIONS)
    edge = edge_principal(region)
    for topic in all_topics(REGIONS):
        ops = allowed(rules, edge, TOPIC, topic.name)
        if topic.region == region and topic.kind is not None:  # its ingest topics: in
            assert ops == {READ, DESCRIBE}, topic.name
        elif topic.name in {
            results_topic(region),
            replies_topic(region),
            audit_topic(region),
            dlq_topic(region),
        }:
            assert ops == {WRITE, DESCRIBE}, topic.name  # no READ on its own DLQ
        elif topic.name in {SUMMARIES_TOPIC, SAMPLES_TOPIC}:
            assert ops == {WRITE, DESCRIBE}, topic.name
        elif topic.name == MODELS_TOPIC:  # it follows the registry, never writes it
            assert ops == {READ, DESCRIBE}, topic.name
        elif topic.name == WORKERS_TOPIC:  # it reports what it applied, reads nobody's reports
            assert ops == {WRITE, DESCRIBE}, topic.name
        else:  # other regions' topics, labels
            assert ops == set(), topic.name


@pytest.mark.parametrize("region", REGIONS)
def test_edge_group_and_transactional_ids(region: str) -> None:
    rules = policy(REGIONS)
    edge = edge_principal(region)
    assert allowed(rules, edge, GROUP, edge_group(region)) == {READ, DESCRIBE}
    for txn_id in _txn_ids(region):
        assert allowed(rules, edge, TRANSACTIONAL_ID, txn_id) == {WRITE, DESCRIBE}
    for other in set(REGIONS) - {region}:
        assert allowed(rules, edge, GROUP, edge_group(other)) == set()
        assert allowed(rules, edge, GROUP, replay_group(other, "bad_tag")) == set()
        for txn_id in _txn_ids(other):
            assert allowed(rules, edge, TRANSACTIONAL_ID, txn_id) == set()
    assert allowed(rules, edge, GROUP, replay_group(region, "bad_tag")) == set()
    assert allowed(rules, edge, TRANSACTIONAL_ID, replay_group(region, "bad_tag")) == set()


def test_no_cluster_bindings() -> None:
    # No IDEMPOTENT_WRITE: WRITE on a topic is enough for an idempotent producer since Kafka 2.8
    # (KIP-679); test_policy_is_enforced shows it on the real broker.
    assert not [r for r in policy(REGIONS) if r.resource_type is ResourceType.CLUSTER]


@pytest.mark.parametrize("region", REGIONS)
def test_device_topics_and_groups(region: str) -> None:
    rules = policy(REGIONS)
    device = device_principal(region)
    for topic in all_topics(REGIONS):
        ops = allowed(rules, device, TOPIC, topic.name)
        if topic.region == region and topic.kind is not None:
            assert ops == {WRITE, DESCRIBE}, topic.name  # no READ on ingest
        elif topic.name in {results_topic(region), replies_topic(region)}:
            assert ops == {READ, DESCRIBE}
        else:  # audit, dlq, other regions, cloud, control
            assert ops == set(), topic.name
    assert allowed(rules, device, GROUP, device_group(region, "fleet")) == {READ, DESCRIBE}
    assert allowed(rules, device, GROUP, edge_group(region)) == set()
    for other in set(REGIONS) - {region}:
        assert allowed(rules, device, GROUP, device_group(other, "fleet")) == set()
    assert not [r for r in rules if r.principal == device and r.resource_type is TRANSACTIONAL_ID]


@pytest.mark.parametrize("region", REGIONS)
def test_gateway_topics_and_groups(region: str) -> None:
    rules = policy(REGIONS)
    gateway = gateway_principal(region)
    for topic in all_topics(REGIONS):
        ops = allowed(rules, gateway, TOPIC, topic.name)
        if topic.region == region and topic.kind is not None:
            assert ops == {WRITE, DESCRIBE}, topic.name  # produces envelopes, never reads ingest
        elif topic.name == reports_topic(region):
            assert ops == {WRITE, DESCRIBE}, topic.name
        elif topic.name == replies_topic(region):
            assert ops == {READ, DESCRIBE}, topic.name  # routes sealed replies it cannot open
        else:  # results, audit, dlq, other regions, cloud, control
            assert ops == set(), topic.name
    assert not [r for r in rules if r.principal == gateway and r.resource_type in {GROUP, TRANSACTIONAL_ID}]


@pytest.mark.parametrize("region", REGIONS)
def test_backend_topics_and_groups(region: str) -> None:
    rules = policy(REGIONS)
    backend = backend_principal(region)
    for topic in all_topics(REGIONS):
        ops = allowed(rules, backend, TOPIC, topic.name)
        if topic.name in {results_topic(region), dlq_topic(region)}:
            assert ops == {READ, DESCRIBE}, topic.name  # read only: never writes results
        elif topic.name == LABELS_TOPIC:
            assert ops == {WRITE, DESCRIBE}, topic.name  # writes ground truth, reads nobody's
        else:  # ingest, replies, audit, other regions, the other cloud and control topics
            assert ops == set(), topic.name
    assert allowed(rules, backend, GROUP, backend_group(region, "fraud-ops")) == {READ, DESCRIBE}
    for group in (edge_group(region), device_group(region, "fleet"), replay_group(region, "bad_tag")):
        assert allowed(rules, backend, GROUP, group) == set(), group
    for other in set(REGIONS) - {region}:
        assert allowed(rules, backend, GROUP, backend_group(other, "fraud-ops")) == set()
    assert not [r for r in rules if r.principal == backend and r.resource_type is TRANSACTIONAL_ID]


def test_aggregator() -> None:
    rules = policy(REGIONS)
    for topic in all_topics(REGIONS):
        ops = allowed(rules, AGGREGATOR, TOPIC, topic.name)
        # The cloud topics, control.models for drift references, every region's device reports: read.
        if (
            topic.name in {SUMMARIES_TOPIC, SAMPLES_TOPIC, LABELS_TOPIC, MODELS_TOPIC}
            or topic.spec is REPORTS
        ):
            assert ops == {READ, DESCRIBE}
        else:
            assert ops == set(), topic.name
    assert allowed(rules, AGGREGATOR, GROUP, AGGREGATOR_GROUP) == {READ, DESCRIBE}
    assert allowed(rules, AGGREGATOR, TRANSACTIONAL_ID, f"{AGGREGATOR_GROUP}-0") == {WRITE, DESCRIBE}
    changelog = f"{AGGREGATOR_GROUP}-windows-changelog"
    assert allowed(rules, AGGREGATOR, TOPIC, changelog) == {Operation.CREATE, READ, WRITE, DESCRIBE}


def test_only_the_registry_publisher_writes_control_models() -> None:
    """No binding lets anyone write the registry: its publisher is admin, a super user (see
    docs/design.md, Security), and a state it did not sign is refused by the workers anyway."""
    writers = [r for r in policy(REGIONS) if r.resource_name == MODELS_TOPIC and r.operation is WRITE]
    assert writers == []
    assert allowed(policy(REGIONS), AGGREGATOR, TOPIC, MODELS_TOPIC) == {READ, DESCRIBE}


@pytest.mark.parametrize("region", REGIONS)
def test_admin_replay(region: str) -> None:
    rules = policy(REGIONS)
    assert allowed(rules, ADMIN, GROUP, replay_group(region, "bad_tag")) == {READ, DESCRIBE}
    assert replay_group(region, "bad_tag").startswith(dlq_replay_group_prefix(region))
    assert allowed(rules, ADMIN, TOPIC, dlq_topic(region)) == {READ, DESCRIBE}


def test_prefixes_do_not_reach_a_region_whose_name_extends_another() -> None:
    rules = policy(["eu", "eu-west"])
    for principal in (edge_principal("eu"), device_principal("eu"), backend_principal("eu")):
        for topic in all_topics(["eu-west"]):
            if topic.region is not None:
                assert allowed(rules, principal, TOPIC, topic.name) == set(), (principal, topic.name)
        assert allowed(rules, principal, GROUP, edge_group("eu-west")) == set()
        assert allowed(rules, principal, GROUP, device_group("eu-west", "fleet")) == set()
        assert allowed(rules, principal, GROUP, backend_group("eu-west", "fleet")) == set()
        for txn_id in _txn_ids("eu-west"):
            assert allowed(rules, principal, TRANSACTIONAL_ID, txn_id) == set()


def test_device_and_backend_group_names() -> None:
    assert device_group("eu-west", "fleet") == "edgestream-device-eu-west.fleet"
    assert backend_group("eu-west", "fraud-ops") == "edgestream-backend-eu-west.fraud-ops"
    for bad in ("", "a.b", "x" * 101, "sp ace"):
        with pytest.raises(ValueError, match="device group name"):
            device_group("eu-west", bad)
        with pytest.raises(ValueError, match="backend group name"):
            backend_group("eu-west", bad)


def test_compare() -> None:
    wanted = policy(["eu-west"])
    stray = AclRule(edge_principal("eu-west"), TOPIC, LITERAL, dlq_topic("eu-west"), READ)
    everyone = AclRule(WILDCARD_PRINCIPAL, TOPIC, PREFIXED, "edge.", READ)
    foreign = AclRule("User:someone-else", TOPIC, LITERAL, "theirs", READ)
    other_region = AclRule(edge_principal("us-east"), TOPIC, LITERAL, "x", READ)
    admin_extra = AclRule(ADMIN, TOPIC, LITERAL, dlq_topic("us-east"), READ)  # super user: inert
    # The aggregator is every region's: its binding on another region's reports is that region's policy.
    shared_elsewhere = AclRule(AGGREGATOR, TOPIC, LITERAL, reports_topic("us-east"), READ)
    shared_stray = AclRule(AGGREGATOR, TOPIC, LITERAL, results_topic("eu-west"), READ)
    actual = [
        *wanted[1:],
        stray,
        everyone,
        foreign,
        other_region,
        admin_extra,
        shared_elsewhere,
        shared_stray,
    ]
    diff = compare(wanted, actual)
    assert diff.missing == [wanted[0]]
    assert diff.extra == sorted([stray, everyone, shared_stray])
    assert not diff.matches
    assert compare(wanted, [*wanted, foreign]).matches


def test_broker_wide_refusals_are_named() -> None:
    with pytest.raises(AuthorizerDisabled, match="SECURITY_DISABLED"):
        _raise_for(54, None, "describe ACLs", "h:1")
    with pytest.raises(AclPermissionDenied, match="ALTER on the cluster"):
        _raise_for(31, "denied", "create ACLs", "h:1")
    with pytest.raises(AclAdminError, match=r"InvalidRequestError \(42\): bad pattern"):
        _raise_for(42, "bad pattern", "create ACLs", "h:1")
    _raise_for(0, None, "describe ACLs", "h:1")


# -- on a broker with an authorizer ------------------------------------------------------------------------


_PLAINTEXT: dict[str, Any] = {"security": "plaintext"} if "security" in BrokerSettings.model_fields else {}
"""This broker's own listeners are PLAINTEXT (+ SASL); ask for that where the broker defaults to TLS."""


async def _cli(*args: str) -> Result:
    """Run ``edgestream topics acl <args>`` in a thread (it runs its own event loop)."""
    runner = CliRunner()
    argv = ["topics", "acl", *args]
    return await asyncio.to_thread(runner.invoke, app, argv, env={"COLUMNS": "250"}, catch_exceptions=False)


@pytest.fixture
def plain_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaSettings]:
    """A broker without an authorizer, for one test (the session broker has one): its bootstrap.

    Its test comes before those on `acl_broker`, so the two never run at the same time.
    """
    settings = BrokerSettings(home=tmp_path_factory.mktemp("kafka-plain"), **_PLAINTEXT)
    local = LocalBroker(settings)
    try:
        yield KafkaSettings(bootstrap_servers=local.start(timeout_s=120).bootstrap)
    finally:
        local.stop()


@broker
async def test_a_broker_without_authorizer_says_so(plain_broker: KafkaSettings) -> None:
    with pytest.raises(AuthorizerDisabled, match="no authorizer") as caught:
        await describe_acls(plain_broker)
    assert "SECURITY_DISABLED" in str(caught.value)
    assert "StandardAuthorizer" in str(caught.value)
    with pytest.raises(AuthorizerDisabled):
        await create_acls(plain_broker, policy(["t0"]))
    with pytest.raises(AuthorizerDisabled):
        await apply_policy(plain_broker, ["t0"])
    result = await _cli("--check", "--region", "t0", "--bootstrap", plain_broker.bootstrap_servers)
    assert result.exit_code == 1
    assert "no authorizer" in result.output


@dataclass(frozen=True)
class AclBroker:
    """The module's broker with the StandardAuthorizer."""

    bootstrap: KafkaSettings
    """PLAINTEXT listener: ``User:ANONYMOUS``, a super user."""
    sasl_bootstrap: str
    """SASL_PLAINTEXT listener: PLAIN users named like edgestream's principals."""


def _authorizer_config(port: int, controller_port: int, sasl_port: int) -> dict[str, str]:
    users = [f"{kind}-{region}" for kind in ("edge", "device") for region in (ENFORCED, NEIGHBOUR)]
    users.append(AGGREGATOR.removeprefix("User:"))
    jaas = " ".join(f'user_{user}="{PASSWORD}"' for user in users)
    return {
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found": "false",
        "super.users": "User:ANONYMOUS",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},SASL_PLAINTEXT://127.0.0.1:{sasl_port},"
        f"CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port},SASL_PLAINTEXT://127.0.0.1:{sasl_port}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,"
        "CONTROLLER:PLAINTEXT",
        "sasl.enabled.mechanisms": "PLAIN",
        "listener.name.sasl_plaintext.plain.sasl.jaas.config": (
            f"org.apache.kafka.common.security.plain.PlainLoginModule required {jaas};"
        ),
    }


@pytest.fixture(scope="module")
def acl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclBroker]:
    """A second broker, with an authorizer, for this module only; stopped at its end.

    Its ports are chosen here (the extra SASL listener must be named in ``listeners``); a start that
    loses a port to another process is retried with new ones.
    """
    for attempt in range(3):
        home: Path = tmp_path_factory.mktemp("kafka-acl")
        port, controller_port, sasl_port = free_port(), free_port(), free_port()
        if len({port, controller_port, sasl_port}) < 3:
            continue
        settings = BrokerSettings(
            home=home,
            port=port,
            controller_port=controller_port,
            extra_config=_authorizer_config(port, controller_port, sasl_port),
            **_PLAINTEXT,
        )
        local = LocalBroker(settings)
        try:
            state = local.start(timeout_s=120)
        except BrokerError:
            if attempt == 2:
                raise
            continue
        try:
            yield AclBroker(KafkaSettings(bootstrap_servers=state.bootstrap), f"127.0.0.1:{sasl_port}")
        finally:
            local.stop()
        return
    pytest.fail("no free ports for the ACL broker")


@pytest.fixture
def region() -> str:
    """A fresh region: its edge and device principals are this test's alone."""
    return f"t{uuid.uuid4().hex[:8]}"


def _ours(rules: Iterable[AclRule], region: str) -> set[AclRule]:
    return {r for r in rules if r.principal in (edge_principal(region), device_principal(region))}


@broker
async def test_create_then_describe_round_trips(acl_broker: AclBroker, region: str) -> None:
    wanted = policy([region])
    await create_acls(acl_broker.bootstrap, wanted)
    described = await describe_acls(acl_broker.bootstrap)
    assert _ours(described, region) == _ours(wanted, region)
    assert set(wanted) <= set(described)
    assert described == sorted(described)
    await create_acls(acl_broker.bootstrap, wanted)  # creating what exists is fine, and no duplicate
    assert await describe_acls(acl_broker.bootstrap) == described


@broker
async def test_apply_is_idempotent_and_prune_removes_strays(acl_broker: AclBroker, region: str) -> None:
    wanted = policy([region])
    first = await apply_policy(acl_broker.bootstrap, [region])
    assert set(_ours(first.created, region)) == _ours(wanted, region)
    assert first.deleted == []

    again = await apply_policy(acl_broker.bootstrap, [region])
    assert again.created == []
    assert again.deleted == []
    assert again.unchanged == wanted

    stray = AclRule(edge_principal(region), TOPIC, LITERAL, dlq_topic(region), READ)
    neighbour = AclRule(edge_principal(f"{region}-n"), TOPIC, LITERAL, "x", READ)  # not managed here
    await create_acls(acl_broker.bootstrap, [stray, neighbour])
    kept = await apply_policy(acl_broker.bootstrap, [region])
    assert kept.created == []
    assert kept.left == [stray]

    pruned = await apply_policy(acl_broker.bootstrap, [region], prune=True)
    assert pruned.deleted == [stray]
    assert pruned.left == []
    described = await describe_acls(acl_broker.bootstrap)
    assert stray not in described
    assert neighbour in described
    assert _ours(described, region) == _ours(wanted, region)
    assert await delete_acls(acl_broker.bootstrap, [neighbour]) == [neighbour]


@broker
async def test_prune_restores_a_deleted_binding(acl_broker: AclBroker, region: str) -> None:
    wanted = policy([region])
    await apply_policy(acl_broker.bootstrap, [region])
    removed = next(r for r in wanted if r.principal == device_principal(region))
    assert await delete_acls(acl_broker.bootstrap, [removed]) == [removed]
    actual, diff = await check_policy(acl_broker.bootstrap, [region])
    assert diff.missing == [removed]
    assert diff.extra == []
    assert removed not in actual
    report = await apply_policy(acl_broker.bootstrap, [region], prune=True)
    assert report.created == [removed]
    assert (await check_policy(acl_broker.bootstrap, [region]))[1].matches


@broker
async def test_cli_apply_and_check(acl_broker: AclBroker, region: str) -> None:
    base = ["--region", region, "--bootstrap", acl_broker.bootstrap.bootstrap_servers]

    result = await _cli("--check", *base)
    assert result.exit_code == 1, result.output
    assert "missing" in result.output

    result = await _cli(*base)
    assert result.exit_code == 0, result.output
    assert "created" in result.output
    assert edge_principal(region) in result.output
    assert "0 deleted" in result.output

    result = await _cli("--check", *base)
    assert result.exit_code == 0, result.output
    assert edge_principal(region) in result.output
    assert "match the policy" in result.output

    stray = AclRule(device_principal(region), TOPIC, LITERAL, audit_topic(region), READ)
    await create_acls(acl_broker.bootstrap, [stray])
    result = await _cli("--check", *base)
    assert result.exit_code == 1, result.output
    assert "extra" in result.output
    assert audit_topic(region) in result.output

    result = await _cli("--prune", *base)
    assert result.exit_code == 0, result.output
    assert "1 deleted" in result.output
    assert (await _cli("--check", *base)).exit_code == 0

    result = await _cli("--check", "--prune", *base)
    assert result.exit_code == 1
    assert "--check changes nothing" in result.output


@broker
async def test_a_principal_without_rights_is_told_so(acl_broker: AclBroker) -> None:
    edge = _sasl(edge_principal(ENFORCED))
    with pytest.raises(AclPermissionDenied, match="CLUSTER_AUTHORIZATION_FAILED"):
        await describe_acls(KafkaSettings(bootstrap_servers=acl_broker.sasl_bootstrap), client_kwargs=edge)


# -- the policy enforced ------------------------------------------------------------------------------------


def _sasl(principal: str) -> dict[str, Any]:
    """Client settings that log in as ``principal`` (``User:<name>``) over SASL/PLAIN."""
    return {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": principal.removeprefix("User:"),
        "sasl_plain_password": PASSWORD,
    }


async def _produce(acl_broker: AclBroker, principal: str, topic: str, **config: Any) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=acl_broker.sasl_bootstrap,
        acks="all",
        request_timeout_ms=10_000,
        **_sasl(principal),
        **config,
    )
    try:
        await producer.start()
        await producer.send_and_wait(topic, b"value", key=b"device-1")
    finally:
        await producer.stop()


async def _read(acl_broker: AclBroker, principal: str, topic: str, group: str | None = None) -> int:
    """Records read from partition 0 (the key's partition is not needed: one record suffices)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=acl_broker.sasl_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        request_timeout_ms=10_000,
        **_sasl(principal),
    )
    try:
        await consumer.start()
        tps = [TopicPartition(topic, p) for p in range(parse_topic(topic).spec.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning()
        batches = await consumer.getmany(timeout_ms=2_000)
        if group is not None:
            await consumer.commit()
        return sum(len(records) for records in batches.values())
    finally:
        await consumer.stop()


async def _visible(acl_broker: AclBroker, principal: str, topic: str) -> bool:
    """Whether the principal may see the topic (DESCRIBE): the metadata answer for it has no error."""
    client = AIOKafkaAdminClient(
        bootstrap_servers=acl_broker.sasl_bootstrap, request_timeout_ms=10_000, **_sasl(principal)
    )
    try:
        await client.start()
        (entry,) = await client.describe_topics([topic])  # the broker never auto-creates topics
    finally:
        await client.close()
    code: int = entry["error_code"]
    assert code in (0, TopicAuthorizationFailedError.errno), code
    return code == 0


async def _transaction(acl_broker: AclBroker, principal: str, txn_id: str, group: str) -> None:
    """A worker's step: results and audit with the consumed offsets, in one transaction."""
    tp = TopicPartition(ingest_topic(ENFORCED, "frame"), 0)
    producer = AIOKafkaProducer(
        bootstrap_servers=acl_broker.sasl_bootstrap,
        transactional_id=txn_id,
        enable_idempotence=True,
        acks="all",
        request_timeout_ms=10_000,
        **_sasl(principal),
    )
    try:
        await producer.start()
        async with producer.transaction():
            await producer.send(results_topic(ENFORCED), b"result", key=b"device-1")
            await producer.send(audit_topic(ENFORCED), b"audit", key=b"request-1")
            await producer.send_offsets_to_transaction({tp: 0}, group)
    finally:
        await producer.stop()


@broker
async def test_policy_is_enforced(acl_broker: AclBroker) -> None:
    admin = acl_broker.bootstrap
    await ensure_topics(admin, all_topics([ENFORCED, NEIGHBOUR]))
    await apply_policy(admin, [ENFORCED, NEIGHBOUR])
    edge, device = edge_principal(ENFORCED), device_principal(ENFORCED)
    ingest = ingest_topic(ENFORCED, "frame")

    # device: writes ingest (idempotent producer, no IDEMPOTENT_WRITE), reads results, nothing else
    await _produce(acl_broker, device, ingest, enable_idempotence=True)
    assert await _read(acl_broker, device, results_topic(ENFORCED), device_group(ENFORCED, "fleet")) == 0
    with pytest.raises(TopicAuthorizationFailedError):
        await _read(acl_broker, device, ingest)
    with pytest.raises(TopicAuthorizationFailedError):
        await _produce(acl_broker, device, results_topic(ENFORCED))
    assert await _visible(acl_broker, device, results_topic(ENFORCED))
    for hidden in (audit_topic(ENFORCED), dlq_topic(ENFORCED), results_topic(NEIGHBOUR), SUMMARIES_TOPIC):
        assert not await _visible(acl_broker, device, hidden), hidden

    # edge: reads ingest in its group, writes in transactions with its ids; at-least-once producer too
    assert await _read(acl_broker, edge, ingest, edge_group(ENFORCED)) == 1
    (txn_id,) = [t for t in _txn_ids(ENFORCED) if t.endswith(f"{ingest}-0")]
    await _transaction(acl_broker, edge, txn_id, edge_group(ENFORCED))
    await _produce(acl_broker, edge, dlq_topic(ENFORCED), enable_idempotence=True)
    await _produce(acl_broker, edge, SUMMARIES_TOPIC, enable_idempotence=True)
    assert await _read(acl_broker, device, results_topic(ENFORCED)) == 1  # committed, visible
    with pytest.raises(TopicAuthorizationFailedError):
        await _read(acl_broker, edge, dlq_topic(ENFORCED))
    for hidden in (ingest_topic(NEIGHBOUR, "frame"), results_topic(NEIGHBOUR), LABELS_TOPIC):
        assert not await _visible(acl_broker, edge, hidden), hidden
    assert await _visible(acl_broker, edge, MODELS_TOPIC), "a worker follows the registry"
    # Only the registry's publisher (admin) writes control.models: not a worker, not the aggregator.
    for writer in (edge, AGGREGATOR):
        with pytest.raises(TopicAuthorizationFailedError):
            await _produce(acl_broker, writer, MODELS_TOPIC, enable_idempotence=True)
    assert await _visible(acl_broker, AGGREGATOR, MODELS_TOPIC), "it reads drift references"
    (neighbour_txn_id, *_) = _txn_ids(NEIGHBOUR)  # starts with "edgestream-edge-<ENFORCED>-"
    assert neighbour_txn_id.startswith(f"{edge_group(ENFORCED)}-")
    with pytest.raises(TransactionalIdAuthorizationFailed):
        await _transaction(acl_broker, edge, neighbour_txn_id, edge_group(ENFORCED))
