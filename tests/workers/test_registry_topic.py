"""The registry on the real broker: states on ``control.models`` (last value wins) and the CLI."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import pytest
from typer.testing import CliRunner, Result

from edgestream.cli import app
from edgestream.pipeline import kafka
from edgestream.pipeline.registry import (
    LocalArtifactStore,
    ModelState,
    SigningKey,
    TrustedKeys,
    publish,
    sha256_hex,
)
from edgestream.pipeline.registry.client import KeyedTail, RegistryClient
from edgestream.pipeline.registry.loader import verified_artifact
from edgestream.pipeline.registry.signing import Manifest
from edgestream.pipeline.settings import KafkaSettings
from edgestream.topics.admin import ensure_topics
from edgestream.topics.catalogue import MODELS_TOPIC, shared_topics

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.broker

T0_MS = 1_750_000_000_000


@pytest.fixture
async def models_topic(bootstrap: KafkaSettings) -> str:
    await ensure_topics(bootstrap, [t for t in shared_topics() if t.name == MODELS_TOPIC])
    return MODELS_TOPIC


async def _cli(bootstrap: KafkaSettings, *args: str) -> Result:
    """Run ``edgestream <args> --bootstrap <bootstrap>`` in a thread (it runs its own event loop)."""
    kafka = bootstrap
    argv = [*args, "--bootstrap", kafka.bootstrap_servers]
    env = {"COLUMNS": "250", **kafka.to_env("EDGESTREAM_KAFKA_")}
    return await asyncio.to_thread(CliRunner().invoke, app, argv, env=env, catch_exceptions=False)


def _signed(key: SigningKey, model: str, versions: int) -> ModelState:
    """A state with ``versions`` published versions of ``model``."""
    state = ModelState(model)
    for version in range(1, versions + 1):
        data = f"{model} v{version}".encode()
        manifest = Manifest(
            model=model,
            version=version,
            variant="tiny",
            sha256=sha256_hex(data),
            size_bytes=len(data),
            input_dtype="uint8",
            input_shape=(32, 32),
            created_at_ms=T0_MS,
        )
        state = publish(state, key.sign(manifest), now_ms=T0_MS + version)
    return state


async def test_states_last_value_wins(bootstrap: KafkaSettings, models_topic: str) -> None:
    key = SigningKey.generate()
    a, b = f"model-{uuid.uuid4().hex[:8]}", f"model-{uuid.uuid4().hex[:8]}"
    client = RegistryClient(bootstrap, signer=key)
    await client.publish_state(_signed(key, a, 1))
    await client.publish_state(_signed(key, b, 1))
    newer = _signed(key, a, 2)
    await client.publish_state(newer)
    states = await client.read_states()
    assert states[a] == newer
    assert states[a].latest == 2
    assert states[b].latest == 1


async def test_cli_publish_promote_list_and_a_worker_load(
    bootstrap: KafkaSettings, models_topic: str, model_home: Path, tmp_path: Path
) -> None:
    home = tmp_path / "registry"
    models = ["--models-root", str(model_home / "models")]
    result = CliRunner().invoke(app, ["registry", "keygen", "--home", str(home)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (home / "signing-key.pem").stat().st_mode & 0o777 == 0o600
    # frame-classifier is shared by every test on this broker, and the demo's test leaves a state of it
    # signed by the demo's own key, which this home rightly refuses to build on. Remove the model first,
    # as an operator would (a tombstone, written as admin), so this home's key starts its history.
    async with kafka.started(kafka.producer(bootstrap, "test-registry-tombstone")) as producer:
        await producer.send_and_wait(MODELS_TOPIC, None, key=b"frame-classifier")
    before = (await RegistryClient(bootstrap).read_states()).get("frame-classifier")
    assert before is None
    base = 0
    for size in ("tiny", "medium"):
        result = await _cli(
            bootstrap, "registry", "publish", "frame-classifier", "--size", size, "--home", str(home), *models
        )
        assert result.exit_code == 0, result.output
        assert "published frame-classifier v" in result.output
    v2 = base + 2
    result = await _cli(
        bootstrap, "registry", "promote", "frame-classifier", "--version", str(v2), "--home", str(home)
    )
    assert result.exit_code == 0, result.output
    assert f"canary v{v2} at 5%" in result.output
    result = await _cli(
        bootstrap, "registry", "pin", "frame-classifier", "--allow", str(v2), "--home", str(home)
    )
    assert result.exit_code == 0, result.output
    result = await _cli(bootstrap, "registry", "list")
    assert result.exit_code == 0, result.output
    assert "frame-classifier" in result.output
    assert f"v{v2} at 5% (stage 1/3)" in result.output
    result = await _cli(bootstrap, "registry", "show", "frame-classifier", "--home", str(home))
    assert result.exit_code == 0, result.output
    assert "canary 5%" in result.output
    assert "ok" in result.output

    state = (await RegistryClient(bootstrap).read_states())["frame-classifier"]
    assert state.canary is not None
    assert state.canary.version == v2
    trusted = TrustedKeys.load(home / "trusted-keys.json")
    artifact = verified_artifact(
        LocalArtifactStore(home / "artifacts"), state.manifest(v2), trusted, tmp_path / "cache"
    )
    assert (artifact.name, artifact.size, artifact.version) == ("frame-classifier", "medium", v2)
    assert artifact.accuracy > 0.5

    result = await _cli(
        bootstrap, "registry", "rollback", "frame-classifier", "--reason", "test", "--home", str(home)
    )
    assert result.exit_code == 0, result.output
    state = (await RegistryClient(bootstrap).read_states())["frame-classifier"]
    assert state.canary is None
    assert state.history[-1].reason == "test"


async def test_a_kept_reader_reads_on_from_where_it_ended_and_sees_each_new_state(
    bootstrap: KafkaSettings, models_topic: str
) -> None:
    key = SigningKey.generate()
    model = f"kept-{uuid.uuid4().hex[:8]}"
    writer = RegistryClient(bootstrap, signer=key)
    await writer.publish_state(_signed(key, model, 1))
    tail = KeyedTail(bootstrap, models_topic, 1, timeout_ms=30_000, client_id="test-kept")
    kept = RegistryClient(bootstrap, trusted=TrustedKeys().with_key(key.public_raw), kept=True)
    try:
        first = await tail.read()
        assert first[model] is not None
        assert tail.records_read >= 1
        before = await kept.read_state(model)
        assert before is not None
        assert before.latest == 1
        await writer.publish_state(_signed(key, model, 2))
        await writer.publish_state(_signed(key, model, 3))
        again = await tail.read()
        assert tail.records_read == 2, "only what was written since the last read"
        assert again[model] != first[model]
        after = await kept.read_state(model)
        assert after is not None
        assert after.latest == 3
    finally:
        await tail.close()
        await kept.close()
