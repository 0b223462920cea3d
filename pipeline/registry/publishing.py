"""Publish an artifact as a model's next version: store the bytes, sign a manifest, publish the state.

What ``edgestream registry publish`` (a zoo build) and ``edgestream retrain`` (a retrained candidate)
share. The new version is ``latest + 1`` and its lineage names the stable version it was published
over (``parent_version``, unless the caller's lineage says otherwise). Publishing never promotes: the
first version of a model becomes stable (:func:`state.publish`), any later one is a candidate until
``registry promote`` runs its canary. Imports aiokafka (through ``client``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from edgestream.pipeline.registry.client import RegistryClient
from edgestream.pipeline.registry.signing import Manifest
from edgestream.pipeline.registry.state import ModelState, publish

if TYPE_CHECKING:
    from edgestream.pipeline.models.zoo import ModelSpec
    from edgestream.pipeline.registry.artifacts import ArtifactStore
    from edgestream.pipeline.registry.signing import SigningKey
    from edgestream.pipeline.settings import KafkaSettings


async def publish_artifact(
    kafka: KafkaSettings,
    store: ArtifactStore,
    key: SigningKey,
    model_spec: ModelSpec,
    data: bytes,
    *,
    metrics: Mapping[str, float],
    lineage: Mapping[str, Any],
) -> ModelState:
    """Store ``data``, sign its manifest as ``model_spec.name``'s next version and publish the new state."""
    sha256 = store.put(data)
    client = RegistryClient(kafka)
    current = (await client.read_states()).get(model_spec.name, ModelState(model_spec.name))
    now_ms = time.time_ns() // 1_000_000
    manifest = Manifest(
        model=model_spec.name,
        version=current.latest + 1,
        variant=model_spec.size,
        sha256=sha256,
        size_bytes=len(data),
        input_dtype=model_spec.input_dtype,
        input_shape=model_spec.input_shape,
        metrics=metrics,
        lineage={"parent_version": current.stable, **lineage},
        created_at_ms=now_ms,
    )
    new = publish(current, key.sign(manifest), now_ms=now_ms)
    await client.publish_state(new)
    return new
