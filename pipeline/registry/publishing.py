"""Publish an artifact as a model's next version: store the bytes, sign a manifest, publish the state.

What ``edgestream registry publish`` (a zoo build, or with ``--onnx``/``--signature`` a user's model:
:func:`publish_signed` checks the signature against the graph before it signs anything) and
``edgestream retrain`` (a retrained candidate) share. The new version is ``latest + 1`` and its
lineage names the stable version it was published over (``parent_version``, unless the caller's
lineage says otherwise). Publishing never promotes: the
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
from typing import TYPE_CHECKING, Any, Final, NamedTuple

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

    from edgestream.pipeline.models.signature import ModelSignature
    from edgestream.pipeline.models.zoo import ModelSpec
    from edgestream.pipeline.registry.artifacts import ArtifactStore
    from edgestream.pipeline.registry.signing import SigningKey
    from edgestream.pipeline.settings import KafkaSettings

SIGNED_VARIANT: Final = "signed"
"""The manifest ``variant`` of a model published with a declared signature (not a zoo size)."""


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
    fields = _Fields(model_spec.size, model_spec.input_dtype, model_spec.input_shape, None)
    return await _publish(kafka, store, key, model_spec.name, fields, data, metrics, lineage, trusted)


async def publish_signed(
    kafka: KafkaSettings,
    store: ArtifactStore,
    key: SigningKey,
    model: str,
    signature: ModelSignature,
    data: bytes,
    *,
    metrics: Mapping[str, float],
    lineage: Mapping[str, Any],
    trusted: TrustedKeys | None = None,
) -> ModelState:
    """Check ``signature`` against the graph ``data`` (:class:`SignatureMismatch` lists each difference,
    and nothing is stored or published), then publish it as ``model``'s next version with the signature
    in its signed manifest (variant ``signed``)."""
    from edgestream.pipeline.models.graphcheck import check_graph  # onnxruntime: only when needed

    check_graph(data, signature, f"{model} (not published)")
    spec = signature.input
    fields = _Fields(SIGNED_VARIANT, spec.dtype, spec.item_shape, signature.to_json())
    return await _publish(kafka, store, key, model, fields, data, metrics, lineage, trusted)


class _Fields(NamedTuple):
    """What a manifest says about the model, apart from its bytes and history."""

    variant: str
    """The zoo size, or ``SIGNED_VARIANT``."""
    input_dtype: str
    """The graph input's dtype."""
    input_shape: tuple[int, ...]
    """One item's shape, without the batch axis."""
    signature: Mapping[str, Any] | None
    """The declared signature as JSON types; None for a zoo model."""


async def _publish(
    kafka: KafkaSettings,
    store: ArtifactStore,
    key: SigningKey,
    model: str,
    fields: _Fields,
    data: bytes,
    metrics: Mapping[str, float],
    lineage: Mapping[str, Any],
    trusted: TrustedKeys | None,
) -> ModelState:
    sha256 = store.put(data)
    client = RegistryClient(kafka, signer=key, trusted=trusted)
    current = await client.read_state(model) or ModelState(model)
    now_ms = time.time_ns() // 1_000_000
    manifest = Manifest(
        model=model,
        version=current.latest + 1,
        variant=fields.variant,
        sha256=sha256,
        size_bytes=len(data),
        input_dtype=fields.input_dtype,
        input_shape=fields.input_shape,
        metrics=metrics,
        lineage={"parent_version": current.stable, **lineage},
        created_at_ms=now_ms,
        signature=fields.signature,
    )
    new = publish(current, key.sign(manifest), now_ms=now_ms)
    await client.publish_state(new)
    return new
