"""The model registry before the demo's story: the zoo's reference model as the stable version of the
story's model, signed by the demo's own registry key (made once, under ``<home>/registry``)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Final

from edgestream.workers.local.story import STORY_MODEL

if TYPE_CHECKING:
    from pathlib import Path

    from edgestream.pipeline.registry.state import ModelState
    from edgestream.pipeline.settings import KafkaSettings

REFERENCE_SIZE: Final = "medium"
"""Zoo size of the reference (stable) version, and so of every retrained one."""


async def prepare_registry(kafka: KafkaSettings, home: Path, model: str = STORY_MODEL) -> ModelState:
    """Make the zoo's reference model ``model``'s stable version, signed by a key the workers trust,
    with no canary in progress; reuse a version already published for it. Returns the state."""
    from edgestream.pipeline.models import ModelStore
    from edgestream.pipeline.registry import LocalArtifactStore, SigningKey, TrustedKeys
    from edgestream.pipeline.registry.client import RegistryClient
    from edgestream.pipeline.registry.publishing import publish_artifact
    from edgestream.pipeline.registry.state import ModelState, advance, rollback, start_canary

    root = home / "registry"
    key_path, trusted_path = root / "signing-key.pem", root / "trusted-keys.json"
    if key_path.exists():
        key = SigningKey.load(key_path)
    else:
        key = SigningKey.generate()
        key.save(key_path)
    trusted = TrustedKeys.load(trusted_path) if trusted_path.exists() else TrustedKeys()
    if key.key_id not in trusted:
        trusted = trusted.with_key(key.public_raw)
        trusted.save(trusted_path)
    store = LocalArtifactStore(root / "artifacts")
    artifact = await asyncio.to_thread(ModelStore(home / "models").get, model, REFERENCE_SIZE)
    client = RegistryClient(kafka, signer=key)  # every state it writes is signed by the demo's key
    state = (await client.read_states()).get(model, ModelState(model))
    now_ms = time.time_ns() // 1_000_000
    if state.canary is not None:
        state = rollback(state, now_ms=now_ms, reason="demo: a new story starts from the reference")
        await client.publish_state(state)

    def usable(version: int) -> bool:
        signed = state.manifest(version)
        return (
            signed.manifest.sha256 == artifact.sha256
            and signed.key_id in trusted
            and store.has(artifact.sha256)
        )

    if state.stable is not None and usable(state.stable):
        return state
    reuse = [s.version for s in state.versions if usable(s.version)]
    if reuse:
        version = reuse[-1]
    else:
        state = await publish_artifact(
            kafka,
            store,
            key,
            artifact.spec,
            artifact.path.read_bytes(),
            metrics={"accuracy": artifact.accuracy},
            lineage={"source": "zoo", "size": REFERENCE_SIZE},
        )
        version = state.latest
        if state.stable == version:
            return state
    state = start_canary(state, version, now_ms=now_ms, stages=(0.5, 1.0), reason="demo: reference")
    while state.canary is not None:
        state = advance(state, now_ms=now_ms, reason="demo: reference")
    await client.publish_state(state)
    return state
