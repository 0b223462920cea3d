"""What the demo's SDK phones need: the signed device catalogue, the gateways' device directories, and
one ``edgestream gateway`` process per region.

The catalogue names each model the devices ask (``MODEL_FOR_KIND``): its stable version (the zoo's
reference, ``medium``, which the edge serves) and its ``tiny`` version (the phones' verified fallback
model), signed by the demo's registry key, which the phones trust (``<home>/registry/trusted-keys.json``).
Without the story the ``tiny`` and ``full`` versions are pinnable too (``EDGE_TIERS``): the edge serves
them to the phones that ask, so the SDK's tier choice (by device class and link) shows in the demo's
devices table. With the story only the reference is served at the edge (pins of earlier runs are
taken back): the story retrains and rolls out the reference alone, and its accuracy per version and
its rollback are judged on the answers of that one line of versions. Each gateway runs as
``gateway-<region>`` (its own Kafka identity and ACLs), serves that catalogue and the registry's
artifacts, authenticates the phones against a directory written from the key file (public keys only),
and is ready once its ``/readyz`` says so. With phones or the story, the workers follow the registry for
every one of these models (and apply its states before they are ready: ``workers/edge/following.py``).
"""

from __future__ import annotations

import asyncio
import os
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from typing import TYPE_CHECKING, Final

from edgestream.pipeline.contract.gatewayauth import write_directory
from edgestream.pipeline.files import atomic_write
from edgestream.pipeline.models import ModelStore
from edgestream.pipeline.registry import LocalArtifactStore, SigningKey, allow_pin, disallow_pin
from edgestream.pipeline.registry.client import RegistryClient
from edgestream.pipeline.registry.devicecatalogue import (
    CATALOGUE_FILE,
    DeviceCatalogue,
    build_catalogue,
    sign_catalogue,
)
from edgestream.pipeline.registry.publishing import publish_artifact
from edgestream.pipeline.security import keyfile
from edgestream.pipeline.security.identities import GATEWAY_SERVER_NODE, Identity
from edgestream.workers.gateway.provision import directory_from_keyring
from edgestream.workers.gateway.settings import DIRECTORY_FILE, GatewaySettings
from edgestream.workers.local.broker.config import free_port
from edgestream.workers.local.fleet_settings import MODEL_FOR_KIND
from edgestream.workers.local.processes import Child, ChildFailed, edgestream_command, stopped_at_exit
from edgestream.workers.local.story_registry import prepare_registry

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
    from pathlib import Path

    from edgestream.pipeline.registry.state import ModelState
    from edgestream.pipeline.security.pki import Pki
    from edgestream.pipeline.settings import KafkaSettings, Region

FALLBACK_TIER: Final = "tiny"
"""The zoo size the phones answer with themselves."""
EDGE_TIERS: Final = ("tiny", "full")
"""Zoo sizes the edge serves beside the reference (pinned) when there is no story."""
CATALOGUE_TTL_MS: Final = 24 * 3600 * 1000
"""How long the demo's catalogue is valid (it is written again on every run)."""


async def prepare_phone_catalogue(
    kafka: KafkaSettings,
    home: Path,
    models: Iterable[str] = tuple(MODEL_FOR_KIND.values()),
    *,
    edge_tiers: bool = False,
) -> dict[str, ModelState]:
    """Make sure the registry has each of ``models``' reference as stable and its tiny version
    published; with ``edge_tiers``, its ``EDGE_TIERS`` published and pinnable too, else none of them
    pinnable. Then write the signed catalogue the gateways serve. Returns the states."""
    states = {model: await _with_tiers(kafka, home, model, edge_tiers) for model in models}
    key = SigningKey.load(home / "registry" / "signing-key.pem")
    write_catalogue(home, key, build_catalogue(states, now_ms=_now_ms(), ttl_ms=CATALOGUE_TTL_MS))
    return states


async def _with_tiers(kafka: KafkaSettings, home: Path, model: str, edge_tiers: bool) -> ModelState:
    """``model``'s state once its reference is stable, its tiny version (and with ``edge_tiers`` its
    full one) published, and exactly the ``EDGE_TIERS`` versions pinnable with ``edge_tiers``, none of
    them without."""
    state = await prepare_registry(kafka, home, model)
    key = SigningKey.load(home / "registry" / "signing-key.pem")
    wanted: set[int] = set()
    for size in EDGE_TIERS if edge_tiers else (FALLBACK_TIER,):  # EDGE_TIERS holds the fallback's
        state, version = await _published(kafka, home, key, state, model, size)
        if edge_tiers:
            wanted.add(version)
    pinned = {v for v in state.pinnable if state.manifest(v).manifest.variant in EDGE_TIERS}
    now_ms, changed = _now_ms(), state
    for version in sorted(wanted - pinned - {state.stable}):
        changed = allow_pin(changed, version, now_ms=now_ms, reason="demo: a tier the phones may ask for")
    for version in sorted(pinned - wanted):
        changed = disallow_pin(changed, version, now_ms=now_ms, reason="demo: the reference alone")
    if changed is not state:
        await RegistryClient(kafka, signer=key).publish_state(changed)
    return changed


async def _published(
    kafka: KafkaSettings, home: Path, key: SigningKey, state: ModelState, model: str, size: str
) -> tuple[ModelState, int]:
    """``state`` with the zoo's ``size`` of ``model`` published (built first if need be: ``full``
    takes ~20 s once), and its version."""
    artifact = await asyncio.to_thread(ModelStore(home / "models").get, model, size)
    store = LocalArtifactStore(home / "registry" / "artifacts")
    same = [s.version for s in state.versions if s.manifest.sha256 == artifact.sha256]
    if same and store.has(artifact.sha256):
        return state, same[-1]
    state = await publish_artifact(
        kafka,
        store,
        key,
        artifact.spec,
        artifact.path.read_bytes(),
        metrics={"accuracy": artifact.accuracy},
        lineage={"source": "zoo", "size": size},
    )
    return state, state.latest


def write_catalogue(home: Path, key: SigningKey, catalogue: DeviceCatalogue) -> Path:
    """Sign ``catalogue`` with ``key`` into ``<home>/registry/device-catalogue.json``."""
    path = home / "registry" / CATALOGUE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, sign_catalogue(key, catalogue))
    return path


def write_directories(home: Path, key_file: Path, regions: Iterable[str], device_ids: Sequence[str]) -> None:
    """Each region's device directory: ``device_ids`` (every region's, for failover) and the devices
    enrolled there, read from the key file as it is now (after the fleet enrolled its devices)."""
    ring = keyfile.load(key_file)
    for region in regions:
        path = home / "gateway" / region / DIRECTORY_FILE
        write_directory(path, region, directory_from_keyring(ring, region, device_ids))


def gateway_urls(regions: Iterable[Region]) -> dict[str, tuple[str, int]]:
    """A free port for each region's gateway, and the URL the phones reach it at."""
    out = {}
    for region in regions:
        port = free_port()
        out[region.name] = (f"wss://127.0.0.1:{port}/v1", port)
    return out


def _gateway_env(
    region: str, port: int, health_port: int, home: Path, pki: Pki, kafka: KafkaSettings
) -> dict[str, str]:
    server = pki.ensure([Identity.gateway(region, GATEWAY_SERVER_NODE)])[
        Identity.gateway(region, GATEWAY_SERVER_NODE)
    ]
    return {
        **os.environ,
        **kafka.to_env("EDGESTREAM_GATEWAY_KAFKA__"),
        "EDGESTREAM_GATEWAY_REGION": region,
        "EDGESTREAM_GATEWAY_HOME": str(home),
        "EDGESTREAM_GATEWAY_PORT": str(port),
        "EDGESTREAM_GATEWAY_HEALTH_PORT": str(health_port),
        "EDGESTREAM_GATEWAY_SERVER_CERT_FILE": str(server.cert_file),
        "EDGESTREAM_GATEWAY_SERVER_KEY_FILE": str(server.key_file),
        # Every local phone connects from this host, all at once: one address may authenticate as many
        # connections as the gateway does (a deployed gateway keeps its per-address default).
        "EDGESTREAM_GATEWAY_MAX_PENDING_PER_SOURCE": str(GatewaySettings.model_fields["max_pending"].default),
    }


@contextmanager
def running_gateways(
    ports: Mapping[str, int],
    home: Path,
    pki: Pki,
    kafka_of: Callable[[str], KafkaSettings],
    logs: Path,
    ready_timeout_s: float,
) -> Iterator[None]:
    """Start one gateway per region of ``ports`` (as ``kafka_of(region)``); wait until each is ready;
    always stop them."""
    with stopped_at_exit([]) as children:
        health: dict[str, int] = {}
        for region, port in ports.items():
            health[region] = free_port()
            env = _gateway_env(region, port, health[region], home, pki, kafka_of(region))
            children.append(
                Child.start(
                    f"gateway {region}",
                    edgestream_command("gateway"),
                    env=env,
                    log_file=logs / f"gateway-{region}.log",
                )
            )
        for child, hport in zip(children, health.values(), strict=True):
            wait_gateway_ready(child, f"http://127.0.0.1:{hport}/readyz", ready_timeout_s)
        yield


def wait_gateway_ready(gateway: Child, url: str, timeout_s: float) -> None:
    """Wait until the gateway's ``/readyz`` answers 200 (Kafka clients up, listening). Raises
    :class:`ChildFailed` when it exits or is not ready in ``timeout_s``."""
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass  # not serving yet, or not ready (503)
        if not gateway.running() or time.monotonic() - gateway.started_s > timeout_s:
            raise ChildFailed(f"{gateway.name} was not ready in {timeout_s:g} s:\n{gateway.tail()}")
        time.sleep(0.2)  # poll interval of a bounded wait on the gateway's own readiness


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
