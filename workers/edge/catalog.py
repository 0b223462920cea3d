"""The models a worker serves: the catalog built from the models loaded at start, the key that routes
each device to a stable or canary version, and, with the registry, how each new version is verified and
loaded and how the registry's states are followed (``pipeline/serving/served.py``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from edgestream.pipeline.registry import LocalArtifactStore, SignedManifest, TrustedKeys
from edgestream.pipeline.registry.client import RegistryClient
from edgestream.pipeline.registry.loader import verified_artifact
from edgestream.pipeline.security.derive import routing_key
from edgestream.pipeline.security.keyring import KeyRing
from edgestream.pipeline.serving.served import Loader, ModelCatalog, ServedModel, open_model
from edgestream.workers.edge.admission import current_master
from edgestream.workers.edge.settings import WorkerSettings


def worker_catalog(
    settings: WorkerSettings, models: Mapping[str, ServedModel], keyring: KeyRing
) -> ModelCatalog:
    """The catalog of ``models`` (by family), routing devices under ``settings.routing_key`` or, by
    default, a key derived from the region's current master key in ``keyring``."""
    return ModelCatalog(
        models, routing_key=_routing_key(settings, keyring), loader=_registry_loader(settings)
    )


def _routing_key(settings: WorkerSettings, keyring: KeyRing) -> bytes:
    if settings.routing_key is not None:
        return settings.routing_key.get_secret_value().encode()
    return routing_key(current_master(keyring, settings.region))


def _registry_loader(settings: WorkerSettings) -> Loader | None:
    """How a registry version is verified and loaded, when the worker follows the registry."""
    if not settings.registry:
        return None
    root = settings.registry_home or settings.home / "registry"
    store = LocalArtifactStore(root / "artifacts")
    trusted = TrustedKeys.load(root / "trusted-keys.json")
    cache = root / "cache"

    def load(signed: SignedManifest) -> ServedModel:
        return open_model(verified_artifact(store, signed, trusted, cache), settings)

    return load


async def follow_registry(
    settings: WorkerSettings, catalog: ModelCatalog, applied: Callable[[], None]
) -> None:
    """Apply each served model's newest registry state to ``catalog`` as it arrives (forever); call
    ``applied`` after each state that took effect."""
    async for state in RegistryClient(settings.kafka).follow():
        if state.model in settings.models and await catalog.apply(state):
            applied()
