"""The broker's ``server.properties``: single-node config, rendering, ports and cluster ids."""

from __future__ import annotations

import base64
import socket
from typing import TYPE_CHECKING

import pytest

from edgestream.workers.local.broker.config import (
    NODE_ID,
    Listener,
    broker_config,
    free_port,
    new_cluster_id,
    pick_ports,
    render_properties,
)
from edgestream.workers.local.broker.settings import BrokerSettings
from tests.workers.local.broker.helpers import settings_in

if TYPE_CHECKING:
    from pathlib import Path


def test_config_is_a_single_node_that_supports_groups_and_transactions(tmp_path: Path) -> None:
    config = broker_config(
        client_listeners=[Listener("PLAINTEXT", 29092)],
        controller=Listener("CONTROLLER", 29093),
        data_dir=tmp_path / "data",
    )

    assert config["process.roles"] == "broker,controller"
    assert config["node.id"] == str(NODE_ID)
    assert config["controller.quorum.voters"] == f"{NODE_ID}@127.0.0.1:29093"
    assert config["controller.listener.names"] == "CONTROLLER"
    assert config["listeners"] == "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093"
    assert config["advertised.listeners"] == "PLAINTEXT://127.0.0.1:29092"
    assert config["listener.security.protocol.map"] == "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    assert config["inter.broker.listener.name"] == "PLAINTEXT"
    assert config["log.dirs"] == str(tmp_path / "data")
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "min.insync.replicas",
    ):
        assert config[key] == "1", key
    assert config["group.initial.rebalance.delay.ms"] == "0"
    assert config["auto.create.topics.enable"] == "false"
    assert config["num.partitions"] == "3"


OFFSET_ENTRY_BYTES = 8
"""An offset index entry: relative offset and position, 4 bytes each (Kafka's ``OffsetIndex``)."""
TIME_ENTRY_BYTES = 12
"""A time index entry: timestamp (8 bytes) and relative offset (4 bytes) (Kafka's ``TimeIndex``)."""


def test_index_files_are_small_yet_hold_a_full_segment(tmp_path: Path) -> None:
    config = broker_config(
        client_listeners=[Listener("PLAINTEXT", 29092)],
        controller=Listener("CONTROLLER", 29093),
        data_dir=tmp_path / "data",
    )

    index_bytes = int(config["log.index.size.max.bytes"])
    most_entries = int(config["log.segment.bytes"]) // int(config["log.index.interval.bytes"])
    assert index_bytes // OFFSET_ENTRY_BYTES >= most_entries  # a segment rolls at its size, not early
    assert index_bytes // TIME_ENTRY_BYTES >= most_entries
    assert index_bytes <= 1024 * 1024  # not Kafka's 10 MiB, whose first page fault reads it all ahead


def test_config_takes_another_listener_and_extras(tmp_path: Path) -> None:
    config = broker_config(
        client_listeners=[Listener("PLAINTEXT", 1), Listener("SSL", 2, security_protocol="SSL")],
        controller=Listener("CONTROLLER", 3),
        data_dir=tmp_path,
        extra={"ssl.protocol": "TLSv1.3", "num.partitions": "6"},
    )

    assert config["listeners"] == "PLAINTEXT://127.0.0.1:1,SSL://127.0.0.1:2,CONTROLLER://127.0.0.1:3"
    assert config["advertised.listeners"] == "PLAINTEXT://127.0.0.1:1,SSL://127.0.0.1:2"
    assert "SSL:SSL" in config["listener.security.protocol.map"].split(",")
    assert config["ssl.protocol"] == "TLSv1.3"
    assert config["num.partitions"] == "6"


def test_config_needs_a_client_listener(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="client listener"):
        broker_config(client_listeners=[], controller=Listener("CONTROLLER", 3), data_dir=tmp_path)


def test_properties_are_sorted_and_escaped() -> None:
    text = render_properties({"z.key": "last", "log.dirs": "C:\\data dir", "a key": " x=y:z", "#k": "v"})

    lines = text.splitlines()
    assert lines[0].startswith("#")
    assert lines[1:] == ["\\#k=v", "a\\ key=\\ x=y:z", "log.dirs=C:\\\\data dir", "z.key=last"]
    assert text.endswith("\n")


def test_free_port_can_be_bound() -> None:
    port = free_port()

    assert 0 < port < 65536
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


def test_pick_ports_are_distinct_or_as_configured(tmp_path: Path) -> None:
    port, controller_port = pick_ports(settings_in(tmp_path))
    assert port != controller_port
    assert port > 0
    assert controller_port > 0

    assert pick_ports(settings_in(tmp_path, port=29092, controller_port=29093)) == (29092, 29093)
    fixed_port, other = pick_ports(settings_in(tmp_path, port=29092))
    assert fixed_port == 29092
    assert other not in (0, 29092)


def test_cluster_id_is_22_chars_of_base64url_for_16_bytes() -> None:
    ids = {new_cluster_id() for _ in range(200)}

    assert len(ids) == 200
    for cluster_id in ids:
        assert len(cluster_id) == 22
        assert not cluster_id.startswith("-")
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_a_cluster_node_is_one_of_three_voters_and_replicates_internal_topics_three_times(
    tmp_path: Path,
) -> None:
    voters = {1: "127.0.0.1:7001", 2: "127.0.0.1:7002", 3: "127.0.0.1:7003"}
    config = broker_config(
        client_listeners=[Listener("SSL", 6002, "SSL")],
        controller=Listener("CONTROLLER", 7002, "SSL"),
        data_dir=tmp_path,
        node_id=2,
        voters=voters,
    )

    assert config["node.id"] == "2"
    assert config["controller.quorum.voters"] == "1@127.0.0.1:7001,2@127.0.0.1:7002,3@127.0.0.1:7003"
    assert config["advertised.listeners"] == "SSL://127.0.0.1:6002"
    for key in (
        "default.replication.factor",
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "share.coordinator.state.topic.replication.factor",
    ):
        assert config[key] == "3", key
    for key in (
        "min.insync.replicas",
        "transaction.state.log.min.isr",
        "share.coordinator.state.topic.min.isr",
    ):
        assert config[key] == "2", key
    assert config["unclean.leader.election.enable"] == "false"
    # A dead node is fenced (its partitions led elsewhere) well within a worker's 10 s transaction.
    assert int(config["broker.session.timeout.ms"]) <= 5000
    assert int(config["broker.heartbeat.interval.ms"]) < int(config["broker.session.timeout.ms"])


def test_a_node_must_be_a_voter_at_its_own_controller_address(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="node 4 must be a voter"):
        broker_config(
            client_listeners=[Listener("SSL", 1, "SSL")],
            controller=Listener("CONTROLLER", 7004),
            data_dir=tmp_path,
            node_id=4,
            voters={1: "127.0.0.1:7001", 2: "127.0.0.1:7002", 3: "127.0.0.1:7003"},
        )


def test_the_single_node_config_is_unchanged_by_the_cluster_support(tmp_path: Path) -> None:
    alone = broker_config(
        client_listeners=[Listener("SSL", 1, "SSL")], controller=Listener("CONTROLLER", 2), data_dir=tmp_path
    )
    as_its_own_quorum = broker_config(
        client_listeners=[Listener("SSL", 1, "SSL")],
        controller=Listener("CONTROLLER", 2),
        data_dir=tmp_path,
        node_id=NODE_ID,
        voters={NODE_ID: "127.0.0.1:2"},
    )

    assert alone == as_its_own_quorum
    assert "unclean.leader.election.enable" not in alone
    assert "broker.session.timeout.ms" not in alone
    assert alone["default.replication.factor"] == "1"


def test_the_cleaners_key_map_leaves_the_heap_to_the_broker(tmp_path: Path) -> None:
    """The log cleaner's key map lives on the heap for the broker's life: it must stay far below G1's
    threshold for concurrent marking (45% of the heap) on the smallest heap a node may have, and at
    Kafka's own floor of 1 MiB per cleaner thread or above."""
    config = broker_config(
        client_listeners=[Listener("PLAINTEXT", 29092)],
        controller=Listener("CONTROLLER", 29093),
        data_dir=tmp_path / "data",
    )
    dedupe = int(config["log.cleaner.dedupe.buffer.size"])
    threads = int(config.get("log.cleaner.threads", "1"))
    least_heap_mb = 128  # the least heap the settings accept, for the broker and for a node
    for field in ("heap_mb", "node_heap_mb"):
        BrokerSettings.model_validate({field: least_heap_mb})
        with pytest.raises(ValueError, match=field):
            BrokerSettings.model_validate({field: least_heap_mb - 1})
    assert dedupe <= least_heap_mb * 1024 * 1024 // 8
    assert dedupe // threads >= 1024 * 1024
