"""The broker's TLS reload: handshakes refused while the broker swaps its SSL engine are retried
(with the real backoff, 0.5 s then 1 s); each reload names a new generation of the stores."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
from aiokafka.errors import ClusterAuthorizationFailedError, KafkaConnectionError, NodeNotReadyError

from edgestream.pipeline.errors import BrokerError
from edgestream.pipeline.security.pki import TlsFiles
from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.local.broker import tls

KAFKA = KafkaSettings(bootstrap_servers="127.0.0.1:1")


def _failing(errors: list[Exception]) -> tuple[list[int], object]:
    calls: list[int] = []

    async def alter(kafka: KafkaSettings, configs: Mapping[str, str], node_id: int) -> None:
        del kafka, configs
        calls.append(node_id)
        if errors:
            raise errors.pop(0)

    return calls, alter


@pytest.mark.parametrize("error", [KafkaConnectionError("closed"), NodeNotReadyError("node 1")])
async def test_a_refused_or_not_ready_broker_is_tried_again(
    monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    calls, alter = _failing([error, error])
    monkeypatch.setattr(tls, "_alter_broker_configs", alter)
    await tls.alter_with_retries(KAFKA, {"k": "v"}, node_id=2)
    assert calls == [2, 2, 2], "every try sets the configs of the same broker"


async def test_an_error_that_retrying_cannot_fix_is_raised_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls, alter = _failing([ClusterAuthorizationFailedError("no")])
    monkeypatch.setattr(tls, "_alter_broker_configs", alter)
    with pytest.raises(ClusterAuthorizationFailedError):
        await tls.alter_with_retries(KAFKA, {"k": "v"})
    assert len(calls) == 1


async def test_giving_up_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    calls, alter = _failing([NodeNotReadyError("node 1")] * 3)
    monkeypatch.setattr(tls, "_alter_broker_configs", alter)
    with pytest.raises(BrokerError, match="could not reach broker 1"):
        await tls.alter_with_retries(KAFKA, {"k": "v"}, attempts=3)
    assert len(calls) == 3


async def test_the_backoff_grows_to_two_seconds_and_twelve_tries_are_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls, alter = _failing([NodeNotReadyError("node 1")] * 12)
    monkeypatch.setattr(tls, "_alter_broker_configs", alter)
    waited: list[float] = []

    async def sleep(seconds: float) -> None:
        waited.append(seconds)

    monkeypatch.setattr(tls, "_backoff", sleep)  # not asyncio.sleep: the session's loop runs other tasks
    with pytest.raises(BrokerError, match="could not reach broker 1"):
        await tls.alter_with_retries(KAFKA, {"k": "v"})
    assert len(calls) == 12
    assert waited == [0.5, 1.0, 1.5] + [2.0] * 8


def _own(tmp_path: Path, key: bytes, cert: bytes, bundle: bytes) -> TlsFiles:
    for name, content in (("key.pem", key), ("cert.pem", cert), ("bundle.pem", bundle)):
        (tmp_path / name).write_bytes(content)
    return TlsFiles(tmp_path / "bundle.pem", tmp_path / "cert.pem", tmp_path / "key.pem")


def test_each_reload_writes_new_store_paths_and_prunes_the_older_ones(tmp_path: Path) -> None:
    """New paths per reload (so Kafka rebuilds every SSL engine), private files, older ones removed."""
    root = tmp_path / "broker"
    root.mkdir()
    first = tls.write_stores(tls.next_reload_stores(root), _own(tmp_path, b"K1", b"C1", b"CA-old"))
    second = tls.write_stores(tls.next_reload_stores(root), _own(tmp_path, b"K1", b"C2", b"CA-old+CA-new"))
    assert first != second
    assert [p.name for p in second] == ["keystore-2.pem", "truststore-2.pem"]
    assert second[0].read_bytes() == b"K1C2"
    assert second[1].read_bytes() == b"CA-old+CA-new"
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in second)
    tls.prune_reload_stores(root, second)
    assert sorted(p.name for p in (root / tls.STORES_DIR).iterdir()) == ["keystore-2.pem", "truststore-2.pem"]
    assert [
        p.name for p in tls.write_stores(tls.next_reload_stores(root), _own(tmp_path, b"K", b"C", b"CA"))
    ] == [
        "keystore-3.pem",
        "truststore-3.pem",
    ]


def test_a_start_rewrites_the_reloaded_stores_with_the_pkis_current_files(tmp_path: Path) -> None:
    """A restarted broker reads the paths its last reload set: they must hold what the PKI holds now."""
    root = tmp_path / "broker"
    root.mkdir()
    tls.refresh_reload_stores(root, _own(tmp_path, b"K", b"C", b"CA"))  # never reloaded: nothing to do
    assert not (root / tls.STORES_DIR).exists()
    keystore, truststore = tls.write_stores(
        tls.next_reload_stores(root), _own(tmp_path, b"K1", b"C1", b"CA-old")
    )
    tls.refresh_reload_stores(root, _own(tmp_path, b"K2", b"C2", b"CA-new"))
    assert (keystore.read_bytes(), truststore.read_bytes()) == (b"K2C2", b"CA-new")


def test_the_next_generation_is_named_without_writing_it(tmp_path: Path) -> None:
    root = tmp_path / "node-2"
    assert tls.next_reload_stores(root) == (
        root / tls.STORES_DIR / "keystore-1.pem",
        root / tls.STORES_DIR / "truststore-1.pem",
    )
    assert not root.exists()
    tls.write_stores(tls.next_reload_stores(root), _own(tmp_path, b"K", b"C", b"CA"))
    assert tls.next_reload_stores(root)[0].name == "keystore-2.pem"


def test_a_reload_sets_both_listeners_stores() -> None:
    configs = tls.reload_configs(Path("/n/stores/keystore-4.pem"), Path("/n/stores/truststore-4.pem"))
    assert configs == {
        "listener.name.ssl.ssl.keystore.location": "/n/stores/keystore-4.pem",
        "listener.name.ssl.ssl.truststore.location": "/n/stores/truststore-4.pem",
        "listener.name.controller.ssl.keystore.location": "/n/stores/keystore-4.pem",
        "listener.name.controller.ssl.truststore.location": "/n/stores/truststore-4.pem",
    }


class _Described:
    def __init__(self, *resources: tuple[int, str | None, int, str, list[tuple[object, ...]]]) -> None:
        self.resources = list(resources)


def test_described_values_read_every_entry_and_raise_a_resource_error() -> None:
    entries: list[tuple[object, ...]] = [("a", "1", False, False, False), ("b", "x", False, False, False, [])]
    assert tls.described_values([_Described((0, None, 4, "2", entries))]) == {"a": "1", "b": "x"}
    with pytest.raises(BrokerError, match="broker 2 did not describe its configs"):
        tls.described_values([_Described((42, "invalid", 4, "2", []))])


def test_a_c1_broker_lists_chacha20_first_and_aes_gcm_after(tmp_path: Path) -> None:
    config = tls.tls_config(tmp_path / "k.pem", tmp_path / "t.pem", jit="c1")
    suites = config["ssl.cipher.suites"].split(",")
    assert suites[0] == "TLS_CHACHA20_POLY1305_SHA256"
    assert {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384"} <= set(suites[1:]), (
        "a client without ChaCha20"
    )
    assert config["ssl.enabled.protocols"] == "TLSv1.3"


def test_a_broker_with_c2_keeps_the_jvms_own_suites(tmp_path: Path) -> None:
    assert "ssl.cipher.suites" not in tls.tls_config(tmp_path / "k.pem", tmp_path / "t.pem", jit="tiered")
