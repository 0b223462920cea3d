"""The broker's TLS: its ``ssl.*`` and authorizer settings, its PEM key store, and the dynamic configs
that make a running broker re-read its stores without a restart."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any, Final

from edgestream.pipeline.errors import BrokerError
from edgestream.pipeline.security.certificates import PRINCIPAL_MAPPING_RULES
from edgestream.pipeline.security.identities import SUPER_USERS
from edgestream.workers.local.broker.config import NODE_ID

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from pathlib import Path

    from edgestream.pipeline.security.pki import TlsFiles
    from edgestream.pipeline.settings import KafkaSettings

log = logging.getLogger(__name__)


C1_CIPHER_SUITES: Final = ("TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384")
"""TLS 1.3 suites of a broker whose JVM runs the quick JIT compiler only (``BrokerSettings.jit`` c1), in
the order the broker prefers them (Java's TLS server picks by its own order). The JVM's AES-GCM is fast
only through C2's intrinsics (AES-NI, carry-less multiply for GHASH); under C1 both run as plain Java:
16 KiB records encrypted at ~31 MB/s against ~2,200 MB/s with C2, while ChaCha20-Poly1305 runs at ~168
MB/s under C1. A profile of the demo's broker (JFR, 50 s of the devices) had 46% of its samples in
AES-GCM (``GHASH.blockMult`` alone 28%). ChaCha20-Poly1305 is a TLS 1.3 suite of the same standing
(256-bit key, AEAD); every client here offers it (OpenSSL under Python's ssl and librdkafka, Java 12+).
AES-GCM stays listed after it for a client that offers no ChaCha20 (a FIPS-restricted one). With C2
(``tiered``) the JVM's own order stands: AES-GCM first."""


def cipher_suites(jit: str) -> dict[str, str]:
    """``ssl.cipher.suites`` for a broker JVM with this JIT (``C1_CIPHER_SUITES`` under ``c1``), or
    nothing: the JVM's defaults."""
    return {"ssl.cipher.suites": ",".join(C1_CIPHER_SUITES)} if jit == "c1" else {}


def tls_config(keystore: Path, truststore: Path, *, jit: str = "tiered") -> dict[str, str]:
    """The ``ssl.*`` and authorizer settings of a TLS broker: mutual TLS 1.3 with PEM stores, principals
    from certificate subjects, nothing allowed without an ACL, ``broker`` and ``admin`` super users; the
    suites that suit the JVM's JIT (``cipher_suites``)."""
    return {
        **cipher_suites(jit),
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(keystore),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(truststore),
        "ssl.client.auth": "required",
        "ssl.protocol": "TLSv1.3",
        "ssl.enabled.protocols": "TLSv1.3",
        "ssl.endpoint.identification.algorithm": "https",
        "ssl.principal.mapping.rules": PRINCIPAL_MAPPING_RULES,
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found": "false",
        "super.users": ";".join(SUPER_USERS),
    }


STORES_DIR = "stores"
"""Under the broker's root: the key store and trust bundle of each ``reload-tls``, one generation each."""


def write_keystore(root: Path, own: TlsFiles) -> Path:
    """The broker's key store ``<root>/keystore.pem`` (private key, then certificate), written 0600."""
    return _write_private(root / "keystore.pem", own.key_file.read_bytes() + own.cert_file.read_bytes())


def next_reload_stores(root: Path) -> tuple[Path, Path]:
    """The paths of a new generation of the broker's stores for a reload: ``stores/keystore-N.pem``
    and ``stores/truststore-N.pem``, N one past the newest; nothing is written (``write_stores``), so
    a cluster's reload is planned node by node first.

    A reload names new paths rather than rewriting the same ones: with the same path Kafka decides per
    SSL engine whether the file changed, and on a combined broker and controller one engine of a
    listener sometimes kept the old trust bundle after the first reload of a CA rotation; the next
    reload (the broker's certificate from the new CA) then failed Kafka's check that the old bundle
    trusts the new certificate, and that listener went on serving the old one (the CA rotation test
    failed 5 of 11 runs). A changed path makes Kafka rebuild every engine of both listeners."""
    stores = root / STORES_DIR
    n = 1 + max((_generation(p) for p in stores.glob("keystore-*.pem")), default=0)
    return stores / f"keystore-{n}.pem", stores / f"truststore-{n}.pem"


def write_stores(paths: tuple[Path, Path], own: TlsFiles) -> tuple[Path, Path]:
    """``own``'s key and certificate to the key store ``paths[0]``, its trust bundle to ``paths[1]``
    (both 0600, their directory 0700: the key store holds the broker's private key)."""
    keystore, truststore = paths
    keystore.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_private(keystore, own.key_file.read_bytes() + own.cert_file.read_bytes())
    _write_private(truststore, own.ca_file.read_bytes())
    return keystore, truststore


def reload_configs(keystore: Path, truststore: Path) -> dict[str, str]:
    """The dynamic per-broker configs of a reload: both listeners' (client ``ssl`` and ``controller``)
    key store and trust bundle locations. Both, because a combined node's controller listener serves
    the quorum and the brokers' controller channel with the same certificate and trust."""
    return {
        f"listener.name.{listener}.ssl.{store}.location": str(path)
        for listener in ("ssl", "controller")
        for store, path in (("truststore", truststore), ("keystore", keystore))
    }


def prune_reload_stores(root: Path, keep: tuple[Path, Path]) -> None:
    """Remove every generation of ``stores/`` but ``keep`` (the broker's configs name only those)."""
    for path in (root / STORES_DIR).glob("*store-*.pem"):
        if path not in keep:
            path.unlink(missing_ok=True)


def refresh_reload_stores(root: Path, own: TlsFiles) -> None:
    """At start, rewrite the reload generations still on disk with the PKI's current files: a broker
    that reloaded once keeps those paths in its dynamic configs, and a restart must load what the PKI
    holds now (as it does from ``keystore.pem`` and the bundle before any reload)."""
    for path in (root / STORES_DIR).glob("keystore-*.pem"):
        _write_private(path, own.key_file.read_bytes() + own.cert_file.read_bytes())
    for path in (root / STORES_DIR).glob("truststore-*.pem"):
        _write_private(path, own.ca_file.read_bytes())


def _generation(path: Path) -> int:
    tail = path.stem.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _write_private(path: Path, content: bytes) -> Path:
    """``content`` to ``path`` atomically (a temporary file renamed over it), mode 0600."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(content)
    tmp.replace(path)
    return path


async def alter_with_retries(
    kafka: KafkaSettings, configs: Mapping[str, str], attempts: int = 12, *, node_id: int = NODE_ID
) -> None:
    """``_alter_broker_configs`` of broker ``node_id``, tried again when the connection fails: right
    after an earlier reload the broker may refuse handshakes while it swaps its SSL engine, which the
    client reports as a failed connection or as a node that is not ready (both retriable). On a loaded
    2-core box that lasted past six tries (7.5 s of backoff) once in the test suite; the backoff grows
    by 0.5 s up to 2 s, so twelve tries wait about 20 s in all."""
    from aiokafka.errors import KafkaConnectionError, KafkaError

    for attempt in range(1, attempts + 1):
        try:
            await _alter_broker_configs(kafka, configs, node_id)
            return
        except KafkaError as err:
            if not (isinstance(err, KafkaConnectionError) or err.retriable):
                raise
            if attempt == attempts:
                raise BrokerError(
                    f"could not reach broker {node_id} to reload its TLS stores: {err!r}"
                ) from err
            log.info("reload-tls of broker %d: %r; trying again", node_id, err)
            await _backoff(min(0.5 * attempt, 2.0))


async def _backoff(seconds: float) -> None:
    """The wait between tries (a seam of its own: a test that stubs it leaves every other task's
    ``asyncio.sleep`` alone)."""
    await asyncio.sleep(seconds)


async def _alter_broker_configs(kafka: KafkaSettings, configs: Mapping[str, str], node_id: int) -> None:
    """Set dynamic configs of broker ``node_id`` (AlterConfigs replaces the broker's dynamic set).

    aiokafka sends a broker resource's request to that broker itself, as Kafka requires for
    per-broker configs (the broker checks the new stores before it forwards the change to the
    controller), so ``kafka`` may bootstrap from any node of a cluster."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    from edgestream.pipeline import kafka as kafka_clients

    admin = kafka_clients.admin(kafka, "edgestream-broker-reload")
    await admin.start()
    try:
        responses = await admin.alter_configs(
            [ConfigResource(ConfigResourceType.BROKER, str(node_id), configs=dict(configs))]
        )
    finally:
        await admin.close()
    for response in responses:
        for error_code, message, _type, name in response.resources:
            if error_code:
                raise BrokerError(f"broker {name} refused the new TLS stores: error {error_code}: {message}")


async def await_applied(
    kafka: KafkaSettings, configs: Mapping[str, str], node_id: int, timeout_s: float = 20.0
) -> None:
    """Return once broker ``node_id`` describes ``configs`` as its current values (DescribeConfigs,
    answered by that broker from the config it runs with); BrokerError after ``timeout_s``.

    AlterConfigs returns once the controller has committed the change; the broker applies it when it
    replays the metadata log, a moment later. A rolling reload waits for this before the next node
    changes, so no two nodes are ever between their old and new stores at once."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
    from aiokafka.errors import KafkaError

    from edgestream.pipeline import kafka as kafka_clients

    wanted = dict(configs)
    deadline = asyncio.get_running_loop().time() + timeout_s
    seen: dict[str, str] = {}
    while True:
        admin = kafka_clients.admin(kafka, "edgestream-broker-reload")
        try:
            await admin.start()
            responses = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.BROKER, str(node_id), configs=dict.fromkeys(wanted))]
            )
            seen = described_values(responses)
        except KafkaError as err:  # the broker may refuse a handshake while it swaps its engines
            log.info("reload-tls: describing broker %d: %r; trying again", node_id, err)
        finally:
            await admin.close()
        if all(seen.get(name) == value for name, value in wanted.items()):
            return
        if asyncio.get_running_loop().time() >= deadline:
            raise BrokerError(
                f"broker {node_id} took the new TLS stores but did not apply them within {timeout_s:.0f} s "
                f"(it describes {seen or 'nothing'})"
            )
        await asyncio.sleep(0.25)


def described_values(responses: Iterable[Any]) -> dict[str, str]:
    """Config name -> value from DescribeConfigs responses (every version starts an entry with its
    name and value); an error of the resource is raised as BrokerError."""
    values: dict[str, str] = {}
    for response in responses:
        for error_code, message, _type, name, entries in response.resources:
            if error_code:
                raise BrokerError(f"broker {name} did not describe its configs: {error_code}: {message}")
            for entry in entries:
                values[str(entry[0])] = str(entry[1])
    return values
