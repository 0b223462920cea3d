"""docker-compose.yml read as data (no Docker): the brokers' quorum and security, the wiring of
everything that talks to them, and which secrets each service can read.

The secrets tests run the header's "Start it" commands (the ``edgestream`` ones) in a scratch folder,
then lay out each service's bind mounts there as its container would see them, and look at what is
inside: private keys, master key files, and the files its settings name.
"""

from __future__ import annotations

import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from typer.testing import CliRunner

from edgestream.cli import app
from edgestream.pipeline.errors import ConfigError
from edgestream.pipeline.registry.signing import TRUSTED_KEYS_FILE, TrustedKeys
from edgestream.pipeline.security import keyfile
from edgestream.pipeline.security.certificates import PRINCIPAL_MAPPING_RULES
from edgestream.pipeline.security.identities import Identity
from edgestream.pipeline.security.keysource import KeySource
from edgestream.pipeline.security.pki import Pki
from edgestream.pipeline.settings import DEFAULT_HOME, DEFAULT_REGIONS
from edgestream.workers.edge.settings import WorkerSettings
from edgestream.workers.local.broker.config import replication_config
from edgestream.workers.local.fleet_settings import FleetSettings

if TYPE_CHECKING:
    from collections.abc import Iterator

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
TLS_DIR = "/etc/edgestream/tls"
"""Where every Kafka client and broker finds its TLS files, mounted read-only from ``./.edgestream/tls``."""
CONTAINER_PATHS = "/etc/"
"""Settings naming a path under here name a file a bind mount must provide."""
PRIVATE_KEY_PEM = b"PRIVATE KEY-----"
"""What every PEM private key holds (PKCS#8 ``BEGIN PRIVATE KEY``, and the older typed forms)."""

Service = dict[str, Any]


@dataclass(frozen=True)
class Mount:
    """A bind mount: a host path (relative to the compose file) shown at ``target`` in the container."""

    source: Path
    """As the compose file names it, relative to its folder."""
    target: PurePosixPath
    """Where the container sees it."""
    read_only: bool
    """Whether the container may write it."""


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


_DEFAULTED = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}")


def env(service: Service) -> dict[str, str]:
    """The service's environment as the container sees it with nothing set on the host: ``${X:-d}`` is
    ``d``, and compose's ``$$`` is a literal ``$``."""
    return {
        key: _DEFAULTED.sub(r"\1", str(value)).replace("$$", "$")
        for key, value in service.get("environment", {}).items()
    }


def listener_names(listeners: str) -> set[str]:
    """``A://host:1,B://:2`` -> ``{"A", "B"}``."""
    return {item.split("://", 1)[0] for item in listeners.split(",")}


def bind_mounts(service: Service) -> list[Mount]:
    """The service's bind mounts, short or long syntax (named volumes are not host paths)."""
    mounts: list[Mount] = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            if source.startswith((".", "/")):
                mounts.append(Mount(Path(source), PurePosixPath(target), bool(mode) and "ro" in mode[0]))
        elif volume["type"] == "bind":
            mounts.append(Mount(Path(volume["source"]), PurePosixPath(volume["target"]), volume["read_only"]))
    return mounts


def start_steps() -> list[list[str]]:
    """The compose header's "Start it" lines, each as the arguments a user types."""
    lines = COMPOSE_FILE.read_text().splitlines()
    first = next(n for n, line in enumerate(lines) if line.startswith("# Start it"))
    steps: list[list[str]] = []
    for line in lines[first + 1 :]:
        if not line.startswith("#   "):
            break
        steps.append(shlex.split(line.removeprefix("#"), comments=True))
    return steps


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder where the header's ``edgestream`` commands ran, as a user runs them beside the file."""
    root = tmp_path_factory.mktemp("host")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for argv in (step[1:] for step in start_steps() if step[0] == "edgestream"):
            outcome = CliRunner().invoke(app, argv)
            assert outcome.exit_code == 0, (argv, outcome.output)
        yield root


def host_path(host: Path, source: Path) -> Path:
    """Where a mount's source is: what the commands wrote (``.edgestream/...``), else the checkout."""
    return (host if source.is_relative_to(DEFAULT_HOME) else REPO) / source


def lay_out(host: Path, service: Service, root: Path) -> Path:
    """Copy every bind mount of ``service`` to where its container sees it, under ``root``."""
    for mount in bind_mounts(service):
        source = host_path(host, mount.source)
        assert source.exists(), f"{mount.source} does not exist after the header's commands"
        target = root / mount.target.relative_to("/")
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return root


def inside(root: Path, settings: dict[str, str]) -> dict[str, str]:
    """``settings`` with each container path moved under ``root``."""
    return {
        key: str(root / value.lstrip("/")) if value.startswith(CONTAINER_PATHS) else value
        for key, value in settings.items()
    }


def private_keys(root: Path) -> set[bytes]:
    """Every PEM private key under ``root``."""
    found = (path.read_bytes() for path in root.rglob("*") if path.is_file())
    return {data for data in found if PRIVATE_KEY_PEM in data}


def master_key_regions(root: Path) -> set[str]:
    """The regions of every key file under ``root``."""
    regions: set[str] = set()
    for path in root.rglob("*"):
        if path.is_file() and PRIVATE_KEY_PEM not in path.read_bytes():
            try:
                regions.update(keyfile.load(path, cache_entries=0).regions)
            except ConfigError:
                continue  # not a key file: a certificate, a lock file, prometheus.yml
    return regions


def fleet_regions(settings: dict[str, str]) -> set[str]:
    """The regions a fleet service's settings spread its devices over."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in settings.items():
            mp.setenv(key, value)
        return {region.name for region in FleetSettings().regions}


def is_fleet(service: Service) -> bool:
    """Whether the service runs simulated devices (it has fleet settings)."""
    return any(key.startswith("EDGESTREAM_FLEET_") for key in env(service))


def needs(service: Service) -> tuple[set[Identity], set[str]]:
    """Whom a service authenticates as, and whose master keys it uses, from what it runs."""
    e = env(service)
    if str(service.get("image", "")).startswith("apache/kafka:"):
        return {Identity.broker()}, set()
    if "EDGESTREAM_WORKER_REGION" in e:
        return {Identity.edge(e["EDGESTREAM_WORKER_REGION"])}, {e["EDGESTREAM_WORKER_REGION"]}
    if is_fleet(service):
        regions = fleet_regions(e)
        return {Identity.device(region) for region in regions}, regions
    if "EDGESTREAM_REGISTRY_SERVER_CERT_FILE" in e:  # the artifact server: serves, no Kafka
        return {Identity.registry()}, set()
    if "EDGESTREAM_KAFKA_BOOTSTRAP" in e:  # operator commands (topics and ACLs): a super user
        return {Identity.admin()}, set()
    return set(), set()


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


def test_the_brokers_replicate_as_a_local_cluster_does(brokers: dict[str, dict[str, str]]) -> None:
    """One rule (``topics/replication.py``) for compose, the local cluster and the Strimzi resources."""
    expected = replication_config(len(brokers))
    assert expected["default.replication.factor"] == "3"
    for e in brokers.values():
        for key, value in expected.items():
            assert e["KAFKA_" + key.upper().replace(".", "_")] == value, key


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
    fleets = {name for name, s in services.items() if is_fleet(s)}
    per_fleet = [region for name in fleets for region in fleet_regions(env(services[name]))]
    assert sorted(per_fleet) == sorted(regions)  # one fleet per region
    assert all(services[name]["profiles"] == ["sim"] for name in fleets)
    assert services["prometheus"]["profiles"] == ["observability"]


def test_every_container_path_a_service_names_is_mounted_read_only(
    services: dict[str, Service], host: Path, tmp_path: Path
) -> None:
    clients = {name for name, s in services.items() if any("BOOTSTRAP" in key for key in env(s))}
    assert {"setup"} <= clients
    for name, service in services.items():
        assert all(mount.read_only for mount in bind_mounts(service)), name
        root = lay_out(host, service, tmp_path / name)
        for key, value in env(service).items():
            if value.startswith(CONTAINER_PATHS):
                assert (root / value.lstrip("/")).exists(), (name, key, value)
        if name in clients:
            assert (root / TLS_DIR.lstrip("/") / "ca-bundle.pem").is_file(), name


def test_each_service_holds_only_its_own_identity_and_its_own_regions_keys(
    services: dict[str, Service], host: Path, tmp_path: Path
) -> None:
    pki = Pki(host / DEFAULT_HOME / "tls")
    for name, service in services.items():
        identities, regions = needs(service)
        root = lay_out(host, service, tmp_path / name)
        wanted = {pki.files(identity).key_file.read_bytes() for identity in identities}
        assert private_keys(root) == wanted, (name, identities)
        assert master_key_regions(root) == regions, name
    workers = [s for s in services.values() if "EDGESTREAM_WORKER_REGION" in env(s)]
    assert sorted(needs(s)[1].pop() for s in workers) == sorted(r.name for r in DEFAULT_REGIONS)
    assert needs(services["prometheus"]) == (set(), set())


def test_the_ca_key_is_mounted_nowhere(services: dict[str, Service], host: Path, tmp_path: Path) -> None:
    pki = Pki(host / DEFAULT_HOME / "tls")
    issued = {info.identity for info in pki.status() if info.identity is not None}
    identity_keys = {pki.files(identity).key_file for identity in issued}
    ca_keys = {
        path for path in pki.root.rglob("*") if path.is_file() and PRIVATE_KEY_PEM in path.read_bytes()
    } - identity_keys
    assert len(ca_keys) == 1  # what `certs init` made: one CA
    (ca_key,) = ca_keys
    ca_dir = ca_key.parent.parent  # the CA's folder: current/ (and previous/ while rotating)
    for name, service in services.items():
        for mount in bind_mounts(service):
            source = host_path(host, mount.source)
            assert not source.is_relative_to(ca_dir), (name, mount)
            assert not ca_dir.is_relative_to(source), (name, mount)
        assert ca_key.read_bytes() not in private_keys(lay_out(host, service, tmp_path / name)), name


def mounted_at(host: Path, service: Service, path: str) -> Path:
    """The host path a container path of ``service`` shows (the deepest mount holding it)."""
    mounts = [m for m in bind_mounts(service) if PurePosixPath(path).is_relative_to(m.target)]
    assert mounts, path
    mount = max(mounts, key=lambda m: len(m.target.parts))
    return host_path(host, mount.source) / PurePosixPath(path).relative_to(mount.target)


def test_a_rotation_reaches_the_running_containers(services: dict[str, Service], host: Path) -> None:
    """What a rotation renames into place (a key file, an identity's ``current/`` pair) lies inside a
    mounted directory and is never the mount itself: a bind mount goes on showing what it was bound to.
    The one file mount is the trust bundle (after `certs rotate-ca`, `docker compose restart`)."""
    pki = Pki(host / DEFAULT_HOME / "tls")
    for name, service in services.items():
        identities, _ = needs(service)
        renamed = [pki.files(identity).key_file.parent for identity in identities]
        key_files = [v for k, v in env(service).items() if k.endswith("_KEY_FILE") and "KAFKA" not in k]
        renamed += [mounted_at(host, service, key_file) for key_file in key_files]
        sources = [host_path(host, mount.source) for mount in bind_mounts(service)]
        for path in renamed:
            assert any(path.is_relative_to(source) and path != source for source in sources), (name, path)
        secret_files = [s for s in sources if s.is_relative_to(host / DEFAULT_HOME) and s.is_file()]
        assert secret_files in ([], [pki.ca_file]), name


def test_a_worker_starts_from_what_it_mounts(
    services: dict[str, Service], host: Path, tmp_path: Path
) -> None:
    workers = {name: s for name, s in services.items() if "EDGESTREAM_WORKER_REGION" in env(s)}
    for name, service in workers.items():
        root = lay_out(host, service, tmp_path / name)
        with pytest.MonkeyPatch.context() as mp:
            for key, value in inside(root, env(service)).items():
                mp.setenv(key, value)
            settings = WorkerSettings()  # type: ignore[call-arg]  # kafka comes from the environment
        files = settings.kafka.files
        assert files is not None
        assert all(path.is_file() for path in (files.ca_file, files.cert_file, files.key_file)), name
        keys = KeySource.of(settings.key_file, settings.keys_secret, default_file=settings.home / "keys.json")
        assert keys.watcher(required_regions=[settings.region]).current().regions == (settings.region,)
        # It follows the registry, trusting the keys it mounts, and fetches from the registry service.
        assert settings.registry, name
        assert settings.registry_home is not None
        assert TrustedKeys.load(settings.registry_home / TRUSTED_KEYS_FILE).keys, name
        assert (
            settings.registry_url
            == f"https://registry:{env(services['registry'])['EDGESTREAM_REGISTRY_SERVER_PORT']}"
        )


def test_the_readme_starts_it_as_the_header_says() -> None:
    readme = (REPO / "README.md").read_text()
    block = readme.split("(`docker-compose.yml`", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    assert [shlex.split(line, comments=True) for line in block.splitlines()] == start_steps()
