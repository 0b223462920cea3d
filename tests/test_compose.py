"""docker-compose.yml read as data (no Docker): the brokers' quorum and security, and the wiring of
everything that talks to them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from edgestream.pipeline.security.certificates import PRINCIPAL_MAPPING_RULES
from edgestream.pipeline.settings import DEFAULT_REGIONS

COMPOSE_FILE = Path(__file__).resolve().parent.parent / "docker-compose.yml"
TLS_DIR = "/etc/edgestream/tls"
"""Where every Kafka client and broker finds the PKI, mounted read-only from ``./.edgestream/tls``."""

Service = dict[str, Any]


@pytest.fixture(scope="module")
def services() -> dict[str, Service]:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())  # resolves the anchors and `<<` merges
    found: dict[str, Service] = compose["services"]
    return found


@pytest.fixture(scope="module")
def brokers(services: dict[str, Service]) -> dict[str, dict[str, str]]:
    """Each broker's environment, by service name."""
    return {
        name: env(service)
        for name, service in services.items()
        if str(service.get("image", "")).startswith("apache/kafka:")
    }


def env(service: Service) -> dict[str, str]:
    """The service's environment as the container sees it (compose's ``$$`` is a literal ``$``)."""
    return {key: str(value).replace("$$", "$") for key, value in service.get("environment", {}).items()}


def listener_names(listeners: str) -> set[str]:
    """``A://host:1,B://:2`` -> ``{"A", "B"}``."""
    return {item.split("://", 1)[0] for item in listeners.split(",")}


def read_only_mounts(service: Service) -> dict[str, str]:
    """Target -> source of the service's read-only bind mounts (short or long syntax)."""
    mounts: dict[str, str] = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            if mode and "ro" in mode[0].split(","):
                mounts[target] = source
        elif volume.get("read_only"):
            mounts[volume["target"]] = volume["source"]
    return mounts


def test_three_kraft_nodes_in_one_quorum(brokers: dict[str, dict[str, str]]) -> None:
    assert len(brokers) == 3
    node_ids = {name: int(e["KAFKA_NODE_ID"]) for name, e in brokers.items()}
    assert len(set(node_ids.values())) == 3
    voters = {e["KAFKA_CONTROLLER_QUORUM_VOTERS"] for e in brokers.values()}
    assert len(voters) == 1  # the same voter list everywhere
    parsed = {
        int(voter.split("@")[0]): voter.split("@")[1].split(":")[0] for voter in voters.pop().split(",")
    }
    assert parsed == {node_id: name for name, node_id in node_ids.items()}
    assert len({e["CLUSTER_ID"] for e in brokers.values()}) == 1
    for e in brokers.values():
        assert e["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_every_listener_is_mutual_tls_13(brokers: dict[str, dict[str, str]]) -> None:
    for e in brokers.values():
        protocols = dict(item.split(":") for item in e["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
        assert set(protocols.values()) == {"SSL"}, protocols
        used = listener_names(e["KAFKA_LISTENERS"]) | listener_names(e["KAFKA_ADVERTISED_LISTENERS"])
        assert used <= set(protocols), used - set(protocols)
        assert {e["KAFKA_INTER_BROKER_LISTENER_NAME"], e["KAFKA_CONTROLLER_LISTENER_NAMES"]} <= used
        # The image demands JKS stores whenever advertised listeners hold "SSL://": PEM needs other names.
        assert "SSL://" not in e["KAFKA_ADVERTISED_LISTENERS"]
        assert e["KAFKA_SSL_CLIENT_AUTH"] == "required"
        assert e["KAFKA_SSL_ENABLED_PROTOCOLS"] == e["KAFKA_SSL_PROTOCOL"] == "TLSv1.3"
        assert e["KAFKA_SSL_TRUSTSTORE_LOCATION"].startswith(f"{TLS_DIR}/")


def test_acls_are_enforced(brokers: dict[str, dict[str, str]]) -> None:
    for e in brokers.values():
        assert e["KAFKA_AUTHORIZER_CLASS_NAME"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
        assert e["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
        assert e["KAFKA_SUPER_USERS"] == "User:broker;User:admin"
        assert e["KAFKA_SSL_PRINCIPAL_MAPPING_RULES"] == PRINCIPAL_MAPPING_RULES
        assert e["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
        for key in ("OFFSETS_TOPIC", "TRANSACTION_STATE_LOG", "SHARE_COORDINATOR_STATE_TOPIC"):
            assert e[f"KAFKA_{key}_REPLICATION_FACTOR"] == "3"
        for key in ("KAFKA_MIN_INSYNC_REPLICAS", "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"):
            assert e[key] == "2"


def test_workers_serve_every_region_through_every_broker(
    services: dict[str, Service], brokers: dict[str, dict[str, str]]
) -> None:
    client_addresses = {
        address.split("://", 1)[1]
        for e in brokers.values()
        for address in e["KAFKA_ADVERTISED_LISTENERS"].split(",")
        if address.startswith("CLIENT://")
    }
    assert len(client_addresses) == 3
    workers = {name: s for name, s in services.items() if "EDGESTREAM_WORKER_REGION" in env(s)}
    regions = {env(s)["EDGESTREAM_WORKER_REGION"]: name for name, s in workers.items()}
    assert sorted(regions) == sorted(r.name for r in DEFAULT_REGIONS)
    for service in workers.values():
        e = env(service)
        assert set(e["EDGESTREAM_WORKER_KAFKA__BOOTSTRAP_SERVERS"].split(",")) == client_addresses
        assert e["EDGESTREAM_WORKER_KAFKA__SECURITY_PROTOCOL"] == "SSL"
        assert f":{e['EDGESTREAM_WORKER_HEALTH_PORT']}/readyz" in " ".join(service["healthcheck"]["test"])
        assert service["depends_on"]["setup"]["condition"] == "service_completed_successfully"
        assert "limits" in service["deploy"]["resources"]
    assert services[regions["eu-west"]]["deploy"]["replicas"] == 2
    assert services["fleet"]["profiles"] == ["sim"]
    assert services["prometheus"]["profiles"] == ["observability"]


def test_everything_that_talks_to_kafka_mounts_the_pki_read_only(
    services: dict[str, Service], brokers: dict[str, dict[str, str]]
) -> None:
    clients = {name for name, s in services.items() if any("BOOTSTRAP" in key for key in env(s))}
    assert {"setup", "fleet"} <= clients
    for name in clients | set(brokers):
        assert read_only_mounts(services[name]).get(TLS_DIR) == "./.edgestream/tls", name
        tls_paths = [value for value in env(services[name]).values() if value.startswith("/etc/edgestream/")]
        assert all(Path(path).is_relative_to(TLS_DIR) or path.endswith("/keys.json") for path in tls_paths), (
            name
        )
