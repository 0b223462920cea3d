"""The local broker: config rendering, ports, state, tool checks (pure), and the real session broker."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import stat
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pydantic import ValidationError

from edgestream.pipeline.errors import BrokerError
from edgestream.pipeline.settings import Kafka, kafka_settings
from edgestream.workers.local.broker import (
    INSTALL_HINT,
    NODE_ID,
    BrokerSettings,
    BrokerState,
    Listener,
    LocalBroker,
    broker_config,
    free_port,
    new_cluster_id,
    parse_java_major,
    pick_ports,
    ping,
    render_properties,
)

# -- helpers ----------------------------------------------------------------------------------------


def _settings(tmp_path: Path, **overrides: object) -> BrokerSettings:
    values: dict[str, object] = {"home": tmp_path / "home", "cache_dir": tmp_path / "cache"}
    values.update(overrides)
    return BrokerSettings(**values)  # type: ignore[arg-type]


def _fake_tool(bin_dir: Path, name: str, script: str) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _fake_java(bin_dir: Path, version: str = "17.0.15") -> None:
    _fake_tool(bin_dir, "java", f"echo 'openjdk version \"{version}\" 2025-04-15' >&2\n")


_FAKE_MVN_OK = """for arg in "$@"; do
  case "$arg" in -DoutputDirectory=*) out="${arg#-DoutputDirectory=}" ;; esac
done
: > "$out/kafka_2.13-4.1.1.jar"
: > "$out/kafka-clients-4.1.1.jar"
"""


def _only_on_path(monkeypatch: pytest.MonkeyPatch, bin_dir: Path) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("PATH", str(bin_dir))


def _local_only(state: BrokerState) -> None:
    if state.pid < 0:
        pytest.skip("the session uses an external broker (EDGESTREAM_TEST_BOOTSTRAP)")


def _home_of(state: BrokerState) -> Path:
    return state.data_dir.parent.parent


# -- server.properties --------------------------------------------------------------------------------


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


# -- ports, ids, settings -------------------------------------------------------------------------------


def test_free_port_can_be_bound() -> None:
    port = free_port()

    assert 0 < port < 65536
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


def test_pick_ports_are_distinct_or_as_configured(tmp_path: Path) -> None:
    port, controller_port = pick_ports(_settings(tmp_path))
    assert port != controller_port
    assert port > 0
    assert controller_port > 0

    assert pick_ports(_settings(tmp_path, port=29092, controller_port=29093)) == (29092, 29093)
    fixed_port, other = pick_ports(_settings(tmp_path, port=29092))
    assert fixed_port == 29092
    assert other not in (0, 29092)


def test_cluster_id_is_22_chars_of_base64url_for_16_bytes() -> None:
    ids = {new_cluster_id() for _ in range(200)}

    assert len(ids) == 200
    for cluster_id in ids:
        assert len(cluster_id) == 22
        assert not cluster_id.startswith("-")
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_settings_come_from_the_environment_and_are_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGESTREAM_BROKER_HEAP_MB", "256")
    monkeypatch.setenv("EDGESTREAM_BROKER_PORT", "29092")

    settings = BrokerSettings()

    assert settings.heap_mb == 256
    assert settings.port == 29092
    assert settings.home == Path(".edgestream")
    with pytest.raises(ValidationError):
        settings.heap_mb = 1024
    monkeypatch.setenv("EDGESTREAM_BROKER_PORT", "70000")
    with pytest.raises(ValidationError, match="port"):
        BrokerSettings()


def test_jar_cache_is_per_version(tmp_path: Path) -> None:
    broker = LocalBroker(_settings(tmp_path, kafka_version="4.0.0"))

    assert broker.libs_dir == (tmp_path / "cache").resolve() / "kafka-4.0.0" / "libs"
    default = LocalBroker(BrokerSettings(home=tmp_path))
    assert default.libs_dir == Path.home().resolve() / ".cache/edgestream/kafka-4.1.1/libs"


# -- state ------------------------------------------------------------------------------------------


def test_state_round_trips_through_the_state_file(tmp_path: Path) -> None:
    broker = LocalBroker(_settings(tmp_path))
    state = BrokerState(
        bootstrap="127.0.0.1:29092",
        controller="127.0.0.1:29093",
        pid=4242,
        log_dir=broker.log_dir,
        data_dir=broker.data_dir,
        started_at=1_700_000_000.25,
    )
    broker.root.mkdir(parents=True)
    broker.state_file.write_text(state.to_json())

    assert BrokerState.from_json(broker.state_file.read_text()) == state


def test_a_state_file_naming_another_process_is_not_a_running_broker(tmp_path: Path) -> None:
    broker = LocalBroker(_settings(tmp_path))
    broker.root.mkdir(parents=True)
    this_process = BrokerState(
        "127.0.0.1:1", "127.0.0.1:2", os.getpid(), broker.log_dir, broker.data_dir, 0.0
    )
    broker.state_file.write_text(this_process.to_json())

    assert broker.status() is None
    assert broker.stop() is False
    assert not broker.state_file.exists()  # stale: removed, and this process was not signalled


def test_an_unreadable_state_file_is_no_broker(tmp_path: Path) -> None:
    broker = LocalBroker(_settings(tmp_path))
    broker.root.mkdir(parents=True)
    broker.state_file.write_text("{not json")

    assert broker.status() is None
    assert broker.stop() is False


def test_stop_without_a_broker_is_a_no_op(tmp_path: Path) -> None:
    broker = LocalBroker(_settings(tmp_path))

    assert broker.status() is None
    assert broker.stop() is False
    assert broker.stop() is False


# -- java and maven -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('java version "1.8.0_392"', 8),
        ('openjdk version "21" 2023-09-19', 21),
        ('openjdk version "11.0.22" 2024-01-16 LTS', 11),
    ],
)
def test_java_major_version_is_parsed(output: str, major: int) -> None:
    assert parse_java_major(output) == major


def test_missing_java_names_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _only_on_path(monkeypatch, tmp_path / "bin")

    with pytest.raises(BrokerError, match="`java` is not on PATH") as raised:
        LocalBroker(_settings(tmp_path)).start(timeout_s=5)
    assert INSTALL_HINT in str(raised.value)


def test_missing_maven_names_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_java(tmp_path / "bin")
    _only_on_path(monkeypatch, tmp_path / "bin")

    with pytest.raises(BrokerError, match="`mvn` is not on PATH") as raised:
        LocalBroker(_settings(tmp_path)).fetch_jars(quiet=True)
    assert "apt-get install openjdk-17-jre-headless maven" in str(raised.value)


def test_old_java_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_java(tmp_path / "bin", version="11.0.22")
    _fake_tool(tmp_path / "bin", "mvn", "exit 0\n")
    _only_on_path(monkeypatch, tmp_path / "bin")

    with pytest.raises(BrokerError, match=r"Java 17 or newer.*Java 11"):
        LocalBroker(_settings(tmp_path)).fetch_jars(quiet=True)


def test_maven_failure_carries_its_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_java(tmp_path / "bin")
    _fake_tool(
        tmp_path / "bin",
        "mvn",
        "echo '[INFO] resolving'\necho '[ERROR] Could not resolve kafka_2.13: boom' >&2\nexit 1\n",
    )
    _only_on_path(monkeypatch, tmp_path / "bin")
    broker = LocalBroker(_settings(tmp_path))

    with pytest.raises(BrokerError, match=r"(?s)exit 1.*\[ERROR\] Could not resolve kafka_2\.13: boom"):
        broker.fetch_jars(quiet=True)
    assert not broker.jars_ready()
    assert [path.name for path in broker.cache_dir.iterdir() if path.name.startswith("libs")] == []


def test_fetched_jars_are_cached_and_the_second_fetch_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_java(tmp_path / "bin")
    _fake_tool(tmp_path / "bin", "mvn", _FAKE_MVN_OK)
    _only_on_path(monkeypatch, tmp_path / "bin")
    broker = LocalBroker(_settings(tmp_path))

    libs_dir = broker.fetch_jars(quiet=True)

    assert libs_dir == broker.libs_dir
    assert sorted(jar.name for jar in libs_dir.iterdir()) == [
        "kafka-clients-4.1.1.jar",
        "kafka_2.13-4.1.1.jar",
    ]
    assert broker.jars_ready()
    _only_on_path(monkeypatch, tmp_path / "empty")  # neither java nor mvn: a cache hit must not need them
    assert broker.fetch_jars(quiet=False) == libs_dir


# -- the real broker ----------------------------------------------------------------------------------


def test_status_reports_the_running_broker(kafka_broker: BrokerState) -> None:
    _local_only(kafka_broker)
    broker = LocalBroker(BrokerSettings(home=_home_of(kafka_broker)))

    assert broker.status() == kafka_broker
    assert ping(kafka_broker.kafka(), cluster_id=broker.cluster_id())
    assert not ping(kafka_broker.kafka(), cluster_id=new_cluster_id())  # not our cluster: not ready
    assert broker.config_file.read_text().count(kafka_broker.bootstrap) == 2  # listeners + advertised


def test_start_again_returns_the_running_broker(kafka_broker: BrokerState) -> None:
    _local_only(kafka_broker)

    again = LocalBroker(BrokerSettings(home=_home_of(kafka_broker))).start(timeout_s=30)

    assert again == kafka_broker


async def test_the_broker_answers_a_metadata_request(bootstrap: Kafka) -> None:
    admin = AIOKafkaAdminClient(**kafka_settings(bootstrap).client_kwargs(), request_timeout_ms=10_000)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
    finally:
        await admin.close()

    host, _, port = kafka_settings(bootstrap).bootstrap_servers.rpartition(":")
    assert [(b["node_id"], b["host"], b["port"]) for b in cluster["brokers"]] == [(NODE_ID, host, int(port))]
    assert cluster["cluster_id"]
    assert ping(bootstrap)


async def test_transactions_and_consumer_groups_work_on_one_node(bootstrap: Kafka) -> None:
    topic = f"test.broker.{uuid.uuid4().hex[:12]}"
    admin = AIOKafkaAdminClient(**kafka_settings(bootstrap).client_kwargs(), request_timeout_ms=10_000)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(**kafka_settings(bootstrap).client_kwargs(), transactional_id=f"{topic}.tx")
    await producer.start()
    try:
        await producer.begin_transaction()
        await producer.send_and_wait(topic, b"aborted")
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send(topic, b"committed")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        **kafka_settings(bootstrap).client_kwargs(),
        group_id=f"{topic}.group",
        isolation_level="read_committed",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        async with asyncio.timeout(30):
            record = await consumer.getone()
    finally:
        await consumer.stop()

    assert record.value == b"committed"


def test_the_broker_logs_through_log4j2_into_its_log_dir(kafka_broker: BrokerState) -> None:
    _local_only(kafka_broker)

    text = kafka_broker.server_log.read_text()

    assert "Kafka Server started" in text
    assert kafka_broker.bootstrap in text


def test_ping_is_false_where_nothing_listens() -> None:
    assert ping(f"127.0.0.1:{free_port()}", timeout_s=2) is False


def test_a_start_that_cannot_bind_fails_with_the_brokers_log(
    kafka_broker: BrokerState, tmp_path: Path
) -> None:
    _local_only(kafka_broker)
    taken_port = int(kafka_broker.bootstrap.rpartition(":")[2])
    broker = LocalBroker(BrokerSettings(home=tmp_path / "home", port=taken_port, controller_port=0))

    try:
        with pytest.raises(BrokerError, match=r"(?s)could not bind.*Address already in use"):
            broker.start(timeout_s=60)
        assert broker.status() is None
        assert not broker.state_file.exists()
        server_log = (broker.log_dir / "server.log").read_text()
        assert server_log.count("Exiting Kafka due to fatal exception") == 1  # a fixed port: no retry
    finally:
        broker.stop()
