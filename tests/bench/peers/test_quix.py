"""The peer's librdkafka connection: the same brokers, identity and TLS checks as edgestream's clients."""

from __future__ import annotations

from pathlib import Path

from bench.peers.quix import connection_config
from edgestream.pipeline.security.pki import TlsFiles
from edgestream.pipeline.settings import KafkaSettings


def test_tls_uses_the_same_ca_certificate_and_key_and_verifies_the_broker_name() -> None:
    files = TlsFiles(Path("/pki/ca.pem"), Path("/pki/admin.pem"), Path("/pki/admin.key"))
    config = connection_config(KafkaSettings.tls("127.0.0.1:9093", files)).as_librdkafka_dict()
    assert config["bootstrap.servers"] == "127.0.0.1:9093"
    assert config["security.protocol"] == "ssl"
    assert config["ssl.ca.location"] == "/pki/ca.pem"
    assert config["ssl.certificate.location"] == "/pki/admin.pem"
    assert config["ssl.key.location"] == "/pki/admin.key"
    assert config["ssl.endpoint.identification.algorithm"] == "https"


def test_plaintext_stays_plaintext() -> None:
    config = connection_config(KafkaSettings(bootstrap_servers="127.0.0.1:9092")).as_librdkafka_dict()
    assert config["security.protocol"] == "plaintext"
    assert not any(key.startswith("ssl.") for key in config)
