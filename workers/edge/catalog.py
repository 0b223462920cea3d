"""The models a worker serves: the catalog built from the models loaded at start, the key that routes
each device to a stable or canary version, and, with the registry, how each new version is verified and
loaded (``pipeline/serving/served.py``); ``following.py`` applies the registry's states."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from edgestream.pipeline.registry import (
    ArtifactStore,
    LocalArtifactStore,
    SignedManifest,
    TrustedKeys,
)
from edgestream.pipeline.registry.loader import verified_model
from edgestream.pipeline.registry.remote import remote_store
from edgestream.pipeline.registry.signing import TRUSTED_KEYS_FILE
from edgestream.pipeline.security.derive import routing_key
from edgestream.pipeline.security.keyring import KeyRing
from edgestream.pipeline.serving.served import Loader, ModelCatalog, ServedModel, open_model
from edgestream.workers.edge.admission import current_master
from edgestream.workers.edge.settings import WorkerSettings


def worker_catalog(
    settings: WorkerSettings,
    models: Mapping[str, ServedModel],
    keyring: KeyRing,
    on_refused: Callable[[str], None] | None = None,
) -> ModelCatalog:
    """The catalog of ``models`` (by family), routing devices under ``settings.routing_key`` or, by
    default, a key derived from the region's current master key in ``keyring``; ``on_refused`` hears
    the reason of every registry state refused."""
    return ModelCatalog(
        models,
        routing_key=_routing_key(settings, keyring),
        loader=registry_loader(settings),
        on_refused=on_refused,
    )


def _routing_key(settings: WorkerSettings, keyring: KeyRing) -> bytes:
    if settings.routing_key is not None:
        return settings.routing_key.get_secret_value().encode()
    return routing_key(current_master(keyring, settings.region))


def _registry_root(settings: WorkerSettings) -> Path:
    return settings.registry_home or settings.home / "registry"


def trusted_keys(settings: WorkerSettings) -> TrustedKeys:
    """The registry keys the worker pins: they sign manifests and rollout states."""
    return TrustedKeys.load(_registry_root(settings) / TRUSTED_KEYS_FILE)


def artifact_store(settings: WorkerSettings) -> ArtifactStore:
    """Where the worker reads artifacts: the registry's server at ``registry_url`` or the bucket of
    ``registry_s3`` (either cached under ``registry_cache_dir``), else the local store
    ``<registry_home>/artifacts``. :class:`ConfigError` when a URL is set but the worker has no TLS
    identity to present, or when the S3 settings name a CA or credentials file that cannot be used."""
    if settings.registry_s3 is not None:
        from edgestream.pipeline.registry.s3store import s3_store  # boto3: only where a bucket is used

        return s3_store(settings.registry_s3, _cache_dir(settings))
    if settings.registry_url is None:
        return LocalArtifactStore(_registry_root(settings) / "artifacts")
    return remote_store(
        settings.registry_url,
        settings.kafka.files,
        _cache_dir(settings),
        ca_file=settings.registry_ca_file,
        timeout_s=settings.registry_timeout_s,
        attempts=settings.registry_attempts,
    )


def _cache_dir(settings: WorkerSettings) -> Path:
    return settings.registry_cache_dir or _registry_root(settings) / "cache"


def registry_loader(settings: WorkerSettings) -> Loader | None:
    """How a registry version is verified and loaded, when the worker follows the registry."""
    if not settings.registry:
        return None
    store = artifact_store(settings)
    trusted = trusted_keys(settings)
    cache = _cache_dir(settings)

    def load(signed: SignedManifest) -> ServedModel:
        return open_model(verified_model(store, signed, trusted, cache), settings)

    return load
