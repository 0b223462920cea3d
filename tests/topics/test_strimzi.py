"""Strimzi resources from the catalogue and the policy: the KafkaUsers grant exactly the bindings that
``edgestream topics acl`` applies (and ``--check`` checks) on a broker, every catalogue topic has one
KafkaTopic, and the chart's committed catalogue is what ``edgestream k8s generate`` makes.

The mapping back from Strimzi's vocabulary is written out here on its own (from Strimzi's documented
``KafkaUser`` fields), not taken from ``topics/strimzi.py``, so a wrong name there cannot cancel out.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from edgestream.cli import app
from edgestream.pipeline.security.identities import SUPER_USERS
from edgestream.pipeline.settings import DEFAULT_REGIONS, KafkaSettings
from edgestream.topics import strimzi
from edgestream.topics.acl_admin import apply_policy, check_policy
from edgestream.topics.acls import (
    AclRule,
    Operation,
    PatternType,
    Permission,
    ResourceType,
    edge_principal,
    policy,
)
from edgestream.topics.admin import ensure_topics
from edgestream.topics.catalogue import all_topics, region_topics
from edgestream.topics.quotas import DeviceQuotas
from edgestream.topics.quotas import policy as quota_policy

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The checkout, whose chart holds the committed catalogue."""
REGIONS = [r.name for r in DEFAULT_REGIONS] + ["sa-east-1"]
"""The default regions and one more (with a digit), so nothing holds only for the defaults."""

STRIMZI_RESOURCE = {
    "topic": ResourceType.TOPIC,
    "group": ResourceType.GROUP,
    "cluster": ResourceType.CLUSTER,
    "transactionalId": ResourceType.TRANSACTIONAL_ID,
}
STRIMZI_PATTERN = {"literal": PatternType.LITERAL, "prefix": PatternType.PREFIXED}
STRIMZI_OPERATION = {
    "Read": Operation.READ,
    "Write": Operation.WRITE,
    "Create": Operation.CREATE,
    "Delete": Operation.DELETE,
    "Alter": Operation.ALTER,
    "Describe": Operation.DESCRIBE,
    "ClusterAction": Operation.CLUSTER_ACTION,
    "AlterConfigs": Operation.ALTER_CONFIGS,
    "DescribeConfigs": Operation.DESCRIBE_CONFIGS,
    "IdempotentWrite": Operation.IDEMPOTENT_WRITE,
    "All": Operation.ALL,
}
STRIMZI_PERMISSION = {"allow": Permission.ALLOW, "deny": Permission.DENY}
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def bindings_of(user: dict[str, Any]) -> set[AclRule]:
    """A KafkaUser's ACLs as broker bindings: principal ``User:<metadata.name>`` (the CN Strimzi
    issues; our brokers map the OU, which holds the same principal name), one binding per operation."""
    assert user["spec"]["authentication"] == {"type": "tls"}
    assert user["spec"]["authorization"]["type"] == "simple"
    principal = f"User:{user['metadata']['name']}"
    rules = set()
    for acl in user["spec"]["authorization"]["acls"]:
        resource = acl["resource"]
        kind = STRIMZI_RESOURCE[resource["type"]]
        cluster = kind is ResourceType.CLUSTER
        for operation in acl["operations"]:
            rules.add(
                AclRule(
                    principal=principal,
                    resource_type=kind,
                    pattern_type=PatternType.LITERAL if cluster else STRIMZI_PATTERN[resource["patternType"]],
                    resource_name="kafka-cluster" if cluster else resource["name"],
                    operation=STRIMZI_OPERATION[operation],
                    permission=STRIMZI_PERMISSION[acl["type"]],
                    host=acl["host"],
                )
            )
    return rules


def all_bindings(users: list[dict[str, Any]]) -> set[AclRule]:
    return {rule for user in users for rule in bindings_of(user)}


def test_the_users_grant_exactly_the_policy_that_acl_check_applies() -> None:
    users = strimzi.kafka_users(REGIONS)
    assert all_bindings(users) == set(policy(REGIONS))
    names = [user["metadata"]["name"] for user in users]
    assert len(names) == len(set(names)), "one KafkaUser per principal"
    assert {f"User:{name}" for name in names} == {rule.principal for rule in policy(REGIONS)}


def test_identities_stay_per_region() -> None:
    """A region's users grant nothing on another region's topics, groups or transactional ids."""
    users = {user["metadata"]["name"]: user for user in strimzi.kafka_users(REGIONS)}
    edge = bindings_of(users[edge_principal("eu-west").removeprefix("User:")])
    others = {topic.name for region in REGIONS if region != "eu-west" for topic in region_topics(region)}
    assert not [rule for rule in edge if rule.resource_name in others or "us-east" in rule.resource_name]


def test_transactional_ids_and_groups_are_written_as_strimzi_spells_them() -> None:
    users = {user["metadata"]["name"]: user for user in strimzi.kafka_users(["eu-west"])}
    acls = users["edge-eu-west"]["spec"]["authorization"]["acls"]
    assert {
        "resource": {
            "type": "transactionalId",
            "name": "edgestream-edge-eu-west-edge.eu-west.ingest.",
            "patternType": "prefix",
        },
        "operations": ["Write", "Describe"],
        "host": "*",
        "type": "allow",
    } in acls
    assert {
        "resource": {"type": "group", "name": "edgestream-edge-eu-west", "patternType": "literal"},
        "operations": ["Read"],
        "host": "*",
        "type": "allow",
    } in acls


def test_a_cluster_binding_has_no_name_and_maps_back() -> None:
    rule = AclRule(
        "User:x", ResourceType.CLUSTER, PatternType.LITERAL, "kafka-cluster", Operation.IDEMPOTENT_WRITE
    )
    user = strimzi.kafka_user("User:x", [rule], None)
    assert user["spec"]["authorization"]["acls"] == [
        {"resource": {"type": "cluster"}, "operations": ["IdempotentWrite"], "host": "*", "type": "allow"}
    ]
    assert bindings_of(user) == {rule}


@pytest.mark.parametrize(
    "rule",
    [
        AclRule("User:x", ResourceType.TOPIC, PatternType.LITERAL, "t", Operation.TWO_PHASE_COMMIT),
        AclRule("User:x", ResourceType.DELEGATION_TOKEN, PatternType.LITERAL, "t", Operation.DESCRIBE),
        AclRule("User:x", ResourceType.TOPIC, PatternType.MATCH, "t", Operation.READ),
    ],
)
def test_a_binding_strimzi_cannot_express_is_refused(rule: AclRule) -> None:
    with pytest.raises(strimzi.StrimziUnmappable):
        strimzi.kafka_user("User:x", [rule], None)


@pytest.mark.parametrize("principal", ["User:*", "edge-eu-west", "User:", "User:" + "x" * 65])
def test_a_principal_without_a_certificate_name_is_refused(principal: str) -> None:
    with pytest.raises(strimzi.StrimziUnmappable):
        strimzi.user_name(principal)


def test_every_catalogue_topic_has_one_kafka_topic_with_its_settings() -> None:
    resources = strimzi.kafka_topics(REGIONS, replicas=3, cluster="edgestream")
    by_topic = {resource["spec"]["topicName"]: resource for resource in resources}
    topics = all_topics(REGIONS)
    assert len(resources) == len(topics) == len(by_topic)
    for topic in topics:
        resource = by_topic[topic.name]
        assert resource["apiVersion"] == "kafka.strimzi.io/v1beta2"
        assert resource["kind"] == "KafkaTopic"
        assert resource["metadata"]["labels"] == {"strimzi.io/cluster": "edgestream"}
        assert DNS_SUBDOMAIN.fullmatch(resource["metadata"]["name"]), resource["metadata"]["name"]
        assert "." not in resource["metadata"]["name"]
        spec = resource["spec"]
        assert (spec["partitions"], spec["replicas"]) == (topic.spec.partitions, 3)
        assert spec["config"] == {**topic.spec.topic_configs(), "min.insync.replicas": "2"}
    assert len({resource["metadata"]["name"] for resource in resources}) == len(resources)


def test_min_insync_replicas_follows_replicas_and_is_bounded() -> None:
    single = strimzi.kafka_topics(["eu-west"], replicas=1)
    assert {r["spec"]["config"]["min.insync.replicas"] for r in single} == {"1"}
    with pytest.raises(strimzi.StrimziUnmappable):
        strimzi.kafka_topics(["eu-west"], replicas=2, min_insync_replicas=3)


def test_the_charts_catalogue_is_what_the_command_generates() -> None:
    committed = (REPO_ROOT / strimzi.CHART_CATALOGUE).read_text(encoding="utf-8")
    assert committed == strimzi.catalogue_text([r.name for r in DEFAULT_REGIONS]), (
        "run `edgestream k8s generate` and commit deploy/helm/edgestream/catalogue.yaml"
    )


def test_the_catalogue_gives_each_region_its_users_group_and_ingest_partitions() -> None:
    catalogue = strimzi.chart_catalogue(["eu-west"])["catalogue"]
    (region,) = catalogue["regions"]
    users = {user["metadata"]["name"] for user in catalogue["kafkaUsers"]}
    assert {region["edgeUser"], region["gatewayUser"], catalogue["aggregatorUser"]} <= users
    ingest = [t for t in region_topics("eu-west") if t.kind is not None]
    assert region["ingest"] == [{"topic": t.name, "partitions": t.spec.partitions} for t in ingest]
    assert region["consumerGroup"] == "edgestream-edge-eu-west"


def test_generate_check_and_strimzi_commands(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "catalogue.yaml"
    assert runner.invoke(app, ["k8s", "generate", "-r", "eu-west", "--out", str(out)]).exit_code == 0
    assert (
        runner.invoke(app, ["k8s", "generate", "-r", "eu-west", "--out", str(out), "--check"]).exit_code == 0
    )
    out.write_text(out.read_text().replace("partitions: 3", "partitions: 4", 1))
    assert (
        runner.invoke(app, ["k8s", "generate", "-r", "eu-west", "--out", str(out), "--check"]).exit_code == 1
    )
    printed = runner.invoke(app, ["k8s", "strimzi", "-r", "eu-west", "--cluster", "edge-kafka"])
    assert printed.exit_code == 0, printed.output
    documents = list(yaml.safe_load_all(printed.output))
    assert {d["metadata"]["labels"]["strimzi.io/cluster"] for d in documents} == {"edge-kafka"}
    assert all_bindings([d for d in documents if d["kind"] == "KafkaUser"]) == set(policy(["eu-west"]))
    refused = runner.invoke(app, ["k8s", "strimzi", "-r", "eu-west", "--cluster", "Not_A_Name"])
    assert refused.exit_code == 1


@pytest.mark.broker
async def test_the_users_equal_what_acl_applies_on_the_broker(bootstrap: KafkaSettings) -> None:
    """`topics acl` (apply_policy) for a fresh region, then `topics acl --check` (check_policy): the
    broker's bindings for the region's principals and the aggregator are exactly the KafkaUsers'."""
    region = f"k8s{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, region_topics(region))
    await apply_policy(bootstrap, [region])
    actual, diff = await check_policy(bootstrap, [region])
    assert diff.matches
    generated = all_bindings(strimzi.kafka_users([region]))
    managed = {rule.principal for rule in generated} - set(SUPER_USERS)

    def here(rule: AclRule) -> bool:
        """Not another region's: the aggregator is shared and reads every test region's reports topic."""
        return not rule.resource_name.startswith("edge.") or rule.resource_name.startswith(f"edge.{region}.")

    assert {rule for rule in actual if rule.principal in managed and here(rule)} == {
        rule for rule in generated if rule.principal in managed
    }
    # admin (a super user) collects the bindings of every region on a shared broker: this region's are there.
    assert {rule for rule in generated if rule.principal in SUPER_USERS} <= set(actual)


def test_the_device_users_carry_the_quota_policy_and_no_other_user_has_one() -> None:
    limits = DeviceQuotas(producer_byte_rate=1000, consumer_byte_rate=None, request_percentage=24.5)
    users = {user["metadata"]["name"]: user for user in strimzi.kafka_users(REGIONS, device_quotas=limits)}
    with_quotas = {name: user["spec"]["quotas"] for name, user in users.items() if "quotas" in user["spec"]}
    assert with_quotas == {
        entity.user: {"producerByteRate": 1000, "requestPercentage": 25}
        for entity in quota_policy(REGIONS, limits)
    }
    unlimited = strimzi.kafka_users(REGIONS, device_quotas=DeviceQuotas.none())
    assert not [user for user in unlimited if "quotas" in user["spec"]]


def test_the_generated_quotas_are_the_class_defaults_not_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EDGESTREAM_DEVICE_QUOTA_PRODUCER_BYTE_RATE", "7")
    (device,) = [u for u in strimzi.kafka_users(["eu-west"]) if u["metadata"]["name"] == "device-eu-west"]
    default = DeviceQuotas.model_fields["producer_byte_rate"].default
    assert device["spec"]["quotas"]["producerByteRate"] == default
