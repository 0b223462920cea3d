"""The registry's artifact server and the remote store workers read through: mutual TLS 1.3 from the
project's PKI, content addressing, a verified local cache, bounded retries, and the requests refused;
the worker's settings that choose the store, and ``registry keygen --trust-dir``."""

from __future__ import annotations

import asyncio
import http.client
import ssl
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from edgestream.cli import app
from edgestream.pipeline.errors import ConfigError
from edgestream.pipeline.files import sha256_hex
from edgestream.pipeline.registry.artifacts import LocalArtifactStore
from edgestream.pipeline.registry.artifactserver import ArtifactServer, peer_principal
from edgestream.pipeline.registry.errors import (
    ArtifactMismatch,
    ArtifactNotFound,
    ArtifactUnavailable,
    MalformedRegistryRecord,
)
from edgestream.pipeline.registry.remote import RemoteArtifactStore
from edgestream.pipeline.registry.signing import TRUSTED_KEYS_FILE, TrustedKeys
from edgestream.pipeline.security.identities import Identity
from edgestream.pipeline.security.pki import Pki
from edgestream.pipeline.security.tls import client_context, server_context
from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.edge.catalog import artifact_store
from edgestream.workers.edge.settings import WorkerSettings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

WORKER = Identity.edge("eu-west")
BLOB = b"an onnx graph, as far as the store knows" * 100


class Site:
    """A PKI, the registry's store with one blob, and the server in front of it."""

    def __init__(self, root: Path) -> None:
        self.pki = Pki(root / "tls")
        self.pki.init()
        self.store = LocalArtifactStore(root / "registry" / "artifacts")
        self.sha256 = self.store.put(BLOB)
        self.server = ArtifactServer(self.store, server_context(self.pki.issue(Identity.registry())))
        self.root = root
        self.sleeps: list[float] = []

    @property
    def url(self) -> str:
        return f"https://localhost:{self.server.port}"

    def context(self, identity: Identity = WORKER) -> ssl.SSLContext:
        return client_context(self.pki.issue(identity))

    def remote(self, identity: Identity = WORKER, *, attempts: int = 3) -> RemoteArtifactStore:
        cache = LocalArtifactStore(self.root / "cache" / identity.principal)
        return RemoteArtifactStore(
            self.url, self.context(identity), cache, timeout_s=5, attempts=attempts, sleep=self.sleeps.append
        )


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    site = Site(tmp_path)
    async with site.server:
        yield site


async def test_a_worker_fetches_by_hash_and_caches_what_verifies(site: Site) -> None:
    remote = site.remote()
    assert await asyncio.to_thread(remote.get, site.sha256) == BLOB
    assert remote.cache.path(site.sha256).read_bytes() == BLOB
    await site.server.stop()  # the cache answers now
    assert await asyncio.to_thread(remote.get, site.sha256) == BLOB
    assert site.sleeps == []


async def test_a_corrupt_cache_entry_is_fetched_again_never_served(site: Site) -> None:
    remote = site.remote()
    cached = remote.cache.path(site.sha256)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"flipped bits")
    assert await asyncio.to_thread(remote.get, site.sha256) == BLOB
    assert cached.read_bytes() == BLOB  # repaired
    await site.server.stop()
    cached.write_bytes(BLOB[:-1])  # corrupt again, and no server to fetch from
    with pytest.raises(ArtifactUnavailable):
        await asyncio.to_thread(remote.get, site.sha256)
    assert not cached.exists()  # the corrupt entry is gone, not kept for a later read


async def test_a_cache_that_cannot_be_written_is_a_refusal(site: Site, tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_bytes(b"")
    remote = RemoteArtifactStore(
        site.url, site.context(), LocalArtifactStore(blocked), sleep=site.sleeps.append
    )
    with pytest.raises(ArtifactUnavailable, match="not cached"):
        await asyncio.to_thread(remote.get, site.sha256)


class _Lying(LocalArtifactStore):
    """A store that answers every hash with other bytes (a server that is wrong, or an attacker)."""

    def get(self, sha256: str) -> bytes:
        return b"not what was asked for"


async def test_bytes_that_differ_from_their_hash_are_refused_and_not_cached(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.server.store = _Lying(site.store.root)
    async with site.server:
        remote = site.remote()
        with pytest.raises(ArtifactMismatch) as refused:
            await asyncio.to_thread(remote.get, site.sha256)
    assert refused.value.reason == "artifact_mismatch"
    assert not remote.cache.has(site.sha256)


async def test_an_unknown_hash_is_not_found_at_once(site: Site) -> None:
    remote = site.remote()
    with pytest.raises(ArtifactNotFound):
        await asyncio.to_thread(remote.get, sha256_hex(b"never published"))
    assert site.sleeps == []  # a 404 is an answer, not tried again


async def test_a_blob_corrupted_on_the_server_is_not_served(site: Site) -> None:
    site.store.path(site.sha256).write_bytes(b"rotted on the registry's disk")
    remote = site.remote(attempts=2)
    with pytest.raises(ArtifactUnavailable, match="HTTP 500"):
        await asyncio.to_thread(remote.get, site.sha256)
    assert site.sleeps == [0.5]  # a 5xx is tried again, within the bound
    assert not remote.cache.has(site.sha256)


def _request(site: Site, method: str, target: str, context: ssl.SSLContext) -> tuple[int, bytes]:
    connection = http.client.HTTPSConnection("localhost", site.server.port, context=context, timeout=5)
    try:
        connection.putrequest(method, target, skip_accept_encoding=True)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize(
    "target",
    [
        "/",
        "/artifacts/",
        "/artifacts/sha256/",
        "/artifacts/sha256/..",
        "/artifacts/sha256/../../tls/ca-bundle.pem",
        "/artifacts/sha256/%2e%2e%2fsigning-key.pem",
        "/artifacts/sha256/ab/",
    ],
)
async def test_no_listing_and_no_path_outside_the_store(site: Site, target: str) -> None:
    status, body = await asyncio.to_thread(_request, site, "GET", target, site.context())
    assert status == 404
    assert site.sha256 not in body.decode()


async def test_names_that_are_not_a_sha256_are_refused_before_any_request(site: Site) -> None:
    remote = site.remote()
    for name in ("../../etc/passwd", site.sha256.upper(), site.sha256[:-1]):
        with pytest.raises(MalformedRegistryRecord):
            await asyncio.to_thread(remote.get, name)


async def test_read_only_and_bounded(site: Site) -> None:
    context = site.context()
    target = f"/artifacts/sha256/{site.sha256}"
    assert await asyncio.to_thread(_request, site, "HEAD", target, context) == (200, b"")
    assert (await asyncio.to_thread(_request, site, "PUT", target, context))[0] == 405
    assert (await asyncio.to_thread(_request, site, "DELETE", target, context))[0] == 405
    status, _ = await asyncio.to_thread(_request, site, "GET", "/" + "a" * 9000, context)
    assert status == 431
    with pytest.raises(ConfigError, match="read-only"):
        site.remote().put(b"x")


async def test_a_client_without_a_certificate_is_refused(site: Site) -> None:
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.minimum_version = ssl.TLSVersion.TLSv1_3
    anonymous.load_verify_locations(cafile=site.pki.ca_file)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await asyncio.to_thread(_request, site, "GET", f"/artifacts/sha256/{site.sha256}", anonymous)


async def test_a_certificate_from_another_ca_is_refused(site: Site, tmp_path: Path) -> None:
    stranger = Pki(tmp_path / "other-tls")
    stranger.init()
    files = stranger.issue(Identity.edge("eu-west"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=site.pki.ca_file)  # trusts the server, presents a stranger
    context.load_cert_chain(files.cert_file, files.key_file)
    remote = RemoteArtifactStore(
        site.url, context, LocalArtifactStore(tmp_path / "c"), attempts=2, sleep=site.sleeps.append
    )
    with pytest.raises(ArtifactUnavailable):
        await asyncio.to_thread(remote.get, site.sha256)
    assert not remote.cache.has(site.sha256)


async def test_a_principal_that_may_not_fetch_is_forbidden(site: Site) -> None:
    remote = site.remote(Identity.backend("eu-west"))
    with pytest.raises(ArtifactUnavailable, match="HTTP 403"):
        await asyncio.to_thread(remote.get, site.sha256)
    assert site.sleeps == []
    assert await asyncio.to_thread(site.remote(Identity.gateway("eu-west")).get, site.sha256) == BLOB


async def test_a_server_that_is_not_ours_is_refused(site: Site, tmp_path: Path) -> None:
    other = Pki(tmp_path / "other-tls")
    other.init()
    site.pki.issue(Identity.edge("eu-west"))
    only_other = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    only_other.load_verify_locations(cafile=other.ca_file)
    files = site.pki.files(Identity.edge("eu-west"))
    only_other.load_cert_chain(files.cert_file, files.key_file)
    remote = RemoteArtifactStore(
        site.url, only_other, LocalArtifactStore(tmp_path / "c"), sleep=site.sleeps.append
    )
    with pytest.raises(ArtifactUnavailable, match="server certificate refused"):
        await asyncio.to_thread(remote.get, site.sha256)
    assert site.sleeps == []


async def test_a_server_that_is_down_is_tried_a_bounded_number_of_times(site: Site) -> None:
    remote = site.remote(attempts=3)
    await site.server.stop()
    with pytest.raises(ArtifactUnavailable, match="3 attempts failed"):
        await asyncio.to_thread(remote.get, site.sha256)
    assert site.sleeps == [0.5, 1.0]


def test_only_https_urls(tmp_path: Path) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cache = LocalArtifactStore(tmp_path)
    for url in ("http://registry:8443", "https://", "https://registry/some/path", "registry:8443"):
        with pytest.raises(ConfigError):
            RemoteArtifactStore(url, context, cache)


def test_the_principal_is_the_ou_else_the_cn() -> None:
    ours = {
        "subject": (
            (("organizationName", "edgestream"),),
            (("organizationalUnitName", "edge-eu-west"),),
            (("commonName", "worker"),),
        )
    }
    strimzis = {"subject": ((("commonName", "edge-eu-west"),),)}  # a KafkaUser's certificate
    assert peer_principal(ours) == "edge-eu-west"
    assert peer_principal(strimzis) == "edge-eu-west"
    assert peer_principal({}) is None
    assert peer_principal(None) is None


def test_keygen_writes_the_public_keys_apart_and_makes_the_store(tmp_path: Path) -> None:
    home, trust = tmp_path / "registry", tmp_path / "trust"
    done = CliRunner().invoke(app, ["registry", "keygen", "--home", str(home), "--trust-dir", str(trust)])
    assert done.exit_code == 0, done.output
    assert [p.name for p in trust.iterdir()] == [TRUSTED_KEYS_FILE]  # nothing secret beside it
    assert TrustedKeys.load(trust / TRUSTED_KEYS_FILE) == TrustedKeys.load(home / TRUSTED_KEYS_FILE)
    assert (home / "artifacts").is_dir()


def _worker(tmp_path: Path, kafka: KafkaSettings, **registry: object) -> WorkerSettings:
    return WorkerSettings(kafka=kafka, home=tmp_path, registry=True, **registry)  # type: ignore[arg-type]


async def test_a_worker_reads_the_local_store_unless_given_a_url(site: Site, tmp_path: Path) -> None:
    files = site.pki.issue(WORKER)
    kafka = KafkaSettings.tls("127.0.0.1:9", files)
    local = artifact_store(_worker(tmp_path, kafka))
    assert isinstance(local, LocalArtifactStore)
    assert local.root == tmp_path / "registry" / "artifacts"
    remote = artifact_store(
        _worker(tmp_path, kafka, registry_url=site.url, registry_cache_dir=tmp_path / "c")
    )
    assert isinstance(remote, RemoteArtifactStore)
    assert remote.cache.root == tmp_path / "c"
    assert await asyncio.to_thread(remote.get, site.sha256) == BLOB
    plain = KafkaSettings(bootstrap_servers="127.0.0.1:9")
    with pytest.raises(ConfigError, match="needs this process's TLS identity"):
        artifact_store(_worker(tmp_path, plain, registry_url=site.url))
    for url in ("http://registry:8443", "https://registry:8443/artifacts", "registry:8443"):
        with pytest.raises(ValidationError, match="registry_url"):
            _worker(tmp_path, plain, registry_url=url)


def _silent_client(site: Site, port: int) -> bytes:
    """Connect, complete the handshake, send nothing: what the server answers once it gives up."""
    import socket

    with (
        socket.create_connection(("localhost", port), timeout=10) as raw,
        site.context().wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return tls.recv(4096)


async def test_connections_and_slow_clients_are_bounded(tmp_path: Path) -> None:
    site = Site(tmp_path)
    context = server_context(site.pki.issue(Identity.registry()))
    server = site.server = ArtifactServer(site.store, context, read_timeout_s=1.0, max_connections=1)
    async with server:
        silent = asyncio.create_task(asyncio.to_thread(_silent_client, site, server.port))
        for _ in range(200):  # until it holds the one connection
            if server.open_connections == 1:
                break
            await asyncio.sleep(0.025)
        assert server.open_connections == 1
        with pytest.raises((http.client.HTTPException, ConnectionError, ssl.SSLError)):
            await asyncio.to_thread(_request, site, "GET", f"/artifacts/sha256/{site.sha256}", site.context())
        answer = await silent
    assert answer.startswith(b"HTTP/1.1 408 "), answer


def _lingering_client(site: Site, port: int, read: threading.Event, release: threading.Event) -> bytes:
    """Fetch the blob, read to the server's end of the stream (``read``), then hold the socket open (no
    reply to the server's close) until ``release``."""
    import socket

    with (
        socket.create_connection(("localhost", port), timeout=10) as raw,
        site.context().wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(f"GET /artifacts/sha256/{site.sha256} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        answer = b""
        while chunk := tls.recv(65_536):
            answer += chunk
        read.set()
        release.wait(30)
        return answer


async def test_stop_ends_a_connection_still_closing(site: Site) -> None:
    """A client that has its answer but never closes its end: the server's connection is still closing
    (it waits for the client's close, up to its read timeout) when the server stops, and stop() ends
    it: nothing of the server is left running on the loop."""
    read, release = threading.Event(), threading.Event()
    client = asyncio.create_task(asyncio.to_thread(_lingering_client, site, site.server.port, read, release))
    try:
        assert await asyncio.to_thread(read.wait, 10)
        await site.server.stop()
        serving = [t for t in asyncio.all_tasks() if "ArtifactServer._serve" in repr(t.get_coro())]
        assert not serving, f"{len(serving)} connection(s) of a stopped server still running"
    finally:
        release.set()
        answer = await client
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert answer.endswith(BLOB)


@pytest.mark.parametrize(
    ("setting", "value"), [("read_timeout_s", 0.0), ("write_timeout_s", -1.0), ("max_connections", 0)]
)
def test_the_artifact_server_refuses_bad_settings(tmp_path: Path, setting: str, value: float) -> None:
    site = Site(tmp_path)
    context = server_context(site.pki.issue(Identity.registry()))
    with pytest.raises(ValueError, match=setting):
        ArtifactServer(site.store, context, **{setting: value})  # type: ignore[arg-type]
