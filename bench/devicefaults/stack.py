"""The device side as real processes: per region an edge worker (``python -m edgestream worker``,
``bench/faults/workers.py``) and a device gateway (``python -m edgestream gateway``), on one broker;
devices are ``EdgeClient``s over ``GatewayTransport`` enrolled in every region.

Each region is a fresh one of ``bench/faults/env.py`` (its own topics, ACLs and key file). The gateways
share one home: the PKI of their WebSocket certificates (``gateway-<region>/wss``, one CA the devices
trust), a device directory per region and the registry files they serve (a signed catalogue naming the
tiny ``embedding-scorer``, its artifact). Every process is started with ``new_session`` so a signal sent
to it reaches it alone, and every one is reaped however the run ends.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from prometheus_client.parser import text_string_to_metric_families

from bench import REPO_ROOT
from bench.faults.env import FaultEnv, FaultRegion, make_region, wait_for
from bench.faults.workers import WorkerProcess
from edgestream.device.answers import ClientSettings
from edgestream.device.client import EdgeClient
from edgestream.device.gateway_client import GatewayTransport
from edgestream.device.identity import DeviceIdentity, RegionKey
from edgestream.device.transport import RegionEndpoint
from edgestream.pipeline.contract.gatewayauth import directory_keys, write_directory
from edgestream.pipeline.models import ModelStore
from edgestream.pipeline.registry import (
    LocalArtifactStore,
    Manifest,
    ModelState,
    SigningKey,
    TrustedKeys,
    publish,
)
from edgestream.pipeline.registry.devicecatalogue import CATALOGUE_FILE, build_catalogue, sign_catalogue
from edgestream.pipeline.security.identities import GATEWAY_SERVER_NODE, Identity
from edgestream.pipeline.security.pki import Pki
from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.local.broker.config import free_port
from edgestream.workers.local.fleet_settings import MODEL_FOR_KIND
from edgestream.workers.local.processes import Child, ChildFailed, edgestream_command

FAMILY: Final = "embedding-scorer"
"""The family devices ask for (``kind="embedding"``); its tiny model is the fallback."""
WORKER_SETTINGS: Final[Mapping[str, object]] = {"MODEL_SIZE": "tiny"}
"""On top of ``bench/faults``' base settings: the edge serves the tiny tier the catalogue names."""
GATEWAY_READY_TIMEOUT_S: Final = 60.0
"""A gateway starts its producer and reply consumer and listens within this."""
CATALOGUE_TTL_MS: Final = 3_600_000


def prepare_models(home: Path) -> None:
    """Build (or reuse) the tiny models of every family the worker serves."""
    store = ModelStore(home / "models")
    for name in MODEL_FOR_KIND.values():
        store.get(name, "tiny")


@dataclass(frozen=True)
class Place:
    """Where a region is, for the devices' nearest-region choice."""

    lat: float
    lon: float


PLACES: Final = (Place(53.35, -6.26), Place(40.71, -74.0), Place(19.08, 72.88))
"""The first region is nearest to the devices (``DEVICE_LOCATION``), the second next nearest."""
DEVICE_LOCATION: Final = (51.5, -0.13)


class GatewayProcess:
    """``python -m edgestream gateway`` for one region on fixed ports (a restart reuses them)."""

    def __init__(self, region: str, home: Path, kafka: KafkaSettings, run_dir: Path) -> None:
        self.region = region
        self.home = home
        self.kafka = kafka
        self.run_dir = run_dir
        self.port = free_port()
        """The WebSocket port devices connect to."""
        self.health_port = free_port()
        """/readyz and /metrics."""
        self.incarnation = 0
        self.child: Child | None = None

    @property
    def url(self) -> str:
        return f"wss://localhost:{self.port}/v1"

    def start(self) -> None:
        """Start the next incarnation (the previous one must have exited)."""
        if self.alive():
            raise RuntimeError(f"the gateway of {self.region} is still running")
        self.incarnation += 1
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGESTREAM_GATEWAY_")}
        own = {
            "REGION": self.region,
            "NODE_ID": f"gw-{self.region}.{self.incarnation}",
            "HOME": str(self.home),
            "PORT": str(self.port),
            "HEALTH_PORT": str(self.health_port),
            **self.kafka.to_env("KAFKA__"),
        }
        env.update({f"EDGESTREAM_GATEWAY_{k}": v for k, v in own.items()})
        self.child = Child.start(
            f"gateway {self.region}.{self.incarnation}",
            edgestream_command("gateway"),
            env=env,
            log_file=self.run_dir / f"gateway-{self.region}.{self.incarnation}.log",
            cwd=REPO_ROOT,
            new_session=True,
        )

    def alive(self) -> bool:
        return self.child is not None and self.child.running()

    def _ready_now(self) -> bool:
        child = self.child
        if child is None or not child.running():
            tail = "" if child is None else child.tail()
            raise ChildFailed(f"the gateway of {self.region} exited before it was ready:\n{tail}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=2) as r:
                return bool(r.status == 200)
        except (OSError, urllib.error.URLError):
            return False  # not serving yet

    async def ready(self, timeout_s: float = GATEWAY_READY_TIMEOUT_S) -> float:
        """Wait until /readyz answers 200; the seconds waited."""
        return await wait_for(
            f"gateway {self.region} ready", lambda: asyncio.to_thread(self._ready_now), timeout_s, 0.1
        )

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample on its ``/metrics`` (the region and node labels left out of
        ``labels``); 0 when absent."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    return float(sample.value)
        return 0.0

    def kill9(self) -> None:
        """SIGKILL and reap."""
        if self.child is not None and self.child.running():
            self.child.send_signal(signal.SIGKILL)
            self.child.proc.wait(timeout=30)

    async def stop(self) -> None:
        """SIGTERM (SIGKILL past a bound)."""
        if self.child is not None:
            await self.child.stop_async(timeout_s=15)


@dataclass
class Region:
    """One region: its topics and keys, its worker and its gateway."""

    fault: FaultRegion
    place: Place
    worker: WorkerProcess
    gateway: GatewayProcess

    @property
    def name(self) -> str:
        return self.fault.name

    @property
    def key_id(self) -> int:
        return self.fault.keyring.current_key_id(self.name)

    def device_key(self, device_id: str) -> bytes:
        return self.fault.keyring.device_key(self.name, device_id, self.key_id)


class DeviceStack:
    """Regions with a worker and a gateway each, and the devices' side (directory, catalogue, trust)."""

    def __init__(self, env: FaultEnv, regions: Sequence[Region], gateway_home: Path, trusted: TrustedKeys):
        self.env = env
        self.regions = list(regions)
        self.gateway_home = gateway_home
        self.trusted = trusted
        self.ca_file = str(Pki.in_home(gateway_home).ca_file)
        self.clients: list[EdgeClient] = []

    @classmethod
    async def create(cls, env: FaultEnv, regions: int, device_ids: Sequence[str]) -> DeviceStack:
        """Make ``regions`` fresh regions and the gateways' home with ``device_ids`` enrolled in each;
        nothing is started yet."""
        if not 1 <= regions <= len(PLACES):
            raise ValueError(f"1 to {len(PLACES)} regions, not {regions}")
        gateway_home = env.run_dir / "gateway-home"
        made: list[Region] = []
        for place in PLACES[:regions]:
            fault = await make_region(env, prefix="d")
            kafka = _gateway_kafka(env, fault)
            worker = WorkerProcess(f"worker-{fault.name}", fault, env, WORKER_SETTINGS)
            gateway = GatewayProcess(fault.name, gateway_home, kafka, env.run_dir / fault.name)
            made.append(Region(fault, place, worker, gateway))
        Pki.in_home(gateway_home).ensure([Identity.gateway(r.name, GATEWAY_SERVER_NODE) for r in made])
        for region in made:
            keys = directory_keys((d, region.key_id, region.device_key(d)) for d in device_ids)
            write_directory(gateway_home / "gateway" / region.name / "directory.json", region.name, keys)
        trusted = _publish_catalogue(env.home, gateway_home)
        return cls(env, made, gateway_home, trusted)

    async def start(self) -> None:
        """Start every worker and gateway side by side; wait until all are ready."""
        for region in self.regions:
            region.worker.start()
            region.gateway.start()
        for region in self.regions:
            await region.gateway.ready()
            await region.worker.ready()

    def endpoints(self) -> list[RegionEndpoint]:
        return [
            RegionEndpoint(r.name, r.gateway.url, r.place.lat, r.place.lon, self.ca_file)
            for r in self.regions
        ]

    def client(self, device_id: str, settings: ClientSettings) -> EdgeClient:
        """A device enrolled in every region (keys derived from each region's key file, as provisioning
        would hand them out), its cache in the run's folder; closed by :meth:`close`."""
        by_region = {r.name: r for r in self.regions}
        identity = DeviceIdentity.of(
            device_id, {r.name: RegionKey(r.key_id, r.device_key(device_id)) for r in self.regions}
        )

        def make(endpoint: RegionEndpoint) -> GatewayTransport:
            region = by_region[endpoint.region]
            return GatewayTransport(endpoint, device_id, region.device_key(device_id), region.key_id)

        cache = self.env.run_dir / "devices" / device_id
        client = EdgeClient(identity, self.endpoints(), make, self.trusted, cache, settings)
        self.clients.append(client)
        return client

    async def close(self) -> None:
        """Close every device, then stop every gateway and kill every worker."""
        for client in self.clients:
            await client.close()
        for region in self.regions:
            try:
                await region.gateway.stop()
            finally:
                region.worker.kill()


def _gateway_kafka(env: FaultEnv, region: FaultRegion) -> KafkaSettings:
    """How the region's gateway reaches the broker: as ``gateway-<region>`` on a TLS broker."""
    admin = region.bootstrap
    if admin.security_protocol != "SSL":
        return admin
    if env.tls_root is None:
        raise ValueError("a TLS broker needs the PKI its CA lives in (tls_root)")
    identity = Identity.gateway(region.name)
    files = Pki(env.tls_root).ensure([identity])[identity]
    return KafkaSettings.tls(admin.bootstrap_servers, files)


def _publish_catalogue(model_home: Path, gateway_home: Path) -> TrustedKeys:
    """Store the tiny model in the gateways' artifact store and sign a catalogue naming it (a fresh
    signing key); the devices trust that key."""
    tiny = ModelStore(model_home / "models").get(FAMILY, "tiny")
    data = tiny.path.read_bytes()
    LocalArtifactStore(gateway_home / "registry" / "artifacts").put(data)
    key = SigningKey.generate()
    manifest = Manifest(FAMILY, 1, "tiny", tiny.sha256, len(data), "float16", (30,))
    state = publish(ModelState(FAMILY), key.sign(manifest), now_ms=1)
    now_ms = int(time.time() * 1000)
    catalogue = build_catalogue({FAMILY: state}, now_ms=now_ms - 1000, ttl_ms=CATALOGUE_TTL_MS)
    (gateway_home / "registry" / CATALOGUE_FILE).write_bytes(sign_catalogue(key, catalogue))
    return TrustedKeys().with_key(key.public_raw)
