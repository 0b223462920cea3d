"""Publish an artifact as a model's next version: store the bytes, sign a manifest, publish the state.

What ``edgestream registry publish`` (a zoo build) and ``edgestream retrain`` (a retrained candidate)
share. The new version is ``latest + 1`` and its lineage names the stable version it was published
over (``parent_version``, unless the caller's lineage says otherwise). Publishing never promotes: the
first version of a model becomes stable (:func:`state.publish`), any later one is a candidate until
``registry promote`` runs its canary. Imports aiokafka (through ``client``).

The registry's publisher signs every state it writes with the registry key (``signed_state.py``) and,
given the trusted keys, refuses to build a transition on a state it cannot verify: :func:`publisher`
is that client for a registry home (``signing-key.pem``, ``trusted-keys.json``). On a secured broker
the publisher runs as ``admin``, the only principal that may write ``control.models``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from edgestream.pipeline.registry.client import DEFAULT_TIMEOUT_MS, RegistryClient
from edgestream.pipeline.registry.signing import (
    SIGNING_KEY_FILE,
    TRUSTED_KEYS_FILE,
    Manifest,
    SigningKey,
    TrustedKeys,
)
from edgestream.pipeline.registry.state import ModelState, publish

if TYPE_CHECKING:
    from pathlib import Path

    from edgestream.pipeline.models.zoo import ModelSpec
    from edgestream.pipeline.registry.artifacts import ArtifactStore
    from edgestream.pipeline.registry.signing import SigningKey
    from edgestream.pipeline.settings import KafkaSettings


def publisher(kafka: KafkaSettings, root: Path, *, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> RegistryClient:
    """The registry client of the publisher whose home is ``root``: it signs with the home's key and
    reads only states signed by a key of the home's trusted keys. :class:`ConfigError` when either file
    is missing or bad."""
    return RegistryClient(
        kafka,
        timeout_ms=timeout_ms,
        signer=SigningKey.load(root / SIGNING_KEY_FILE),
        trusted=TrustedKeys.load(root / TRUSTED_KEYS_FILE),
    )


async def publish_artifact(
    kafka: KafkaSettings,
    store: ArtifactStore,
    key: SigningKey,
    model_spec: ModelSpec,
    data: bytes,
    *,
    metrics: Mapping[str, float],
    lineage: Mapping[str, Any],
    trusted: TrustedKeys | None = None,
) -> ModelState:
    """Store ``data``, sign its manifest as ``model_spec.name``'s next version and publish the new state
    (signed with ``key``; the current state is verified first under ``trusted`` when given)."""
    sha256 = store.put(data)
    client = RegistryClient(kafka, signer=key, trusted=trusted)
    current = await client.read_state(model_spec.name) or ModelState(model_spec.name)
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
