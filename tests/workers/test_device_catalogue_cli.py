"""``edgestream registry catalogue`` on the real broker: a user's model published through the CLI
appears in the signed device catalogue with its signature's input spec, and the file verifies under
the home's trusted keys (and its artifact is in the home's store, where the gateway serves it from)."""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING

from typer.testing import CliRunner

from edgestream.cli import app
from edgestream.pipeline.registry import LocalArtifactStore, TrustedKeys
from edgestream.pipeline.registry.devicecatalogue import CATALOGUE_FILE, verify_catalogue
from edgestream.topics.admin import ensure_topics
from edgestream.topics.catalogue import MODELS_TOPIC, shared_topics
from tests.pipeline.models.usermodels import FEATURES, fraud_model
from tests.workers.test_registry_topic import _cli

if TYPE_CHECKING:
    from pathlib import Path

    from edgestream.pipeline.settings import KafkaSettings


async def test_the_catalogue_lists_a_published_model(bootstrap: KafkaSettings, tmp_path: Path) -> None:
    await ensure_topics(bootstrap, [t for t in shared_topics() if t.name == MODELS_TOPIC])
    home = tmp_path / "registry"
    result = CliRunner().invoke(app, ["registry", "keygen", "--home", str(home)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    model = fraud_model()
    onnx, sig = tmp_path / "fraud.onnx", tmp_path / "fraud.json"
    onnx.write_bytes(model.onnx)
    sig.write_text(json.dumps(model.signature))
    name = f"fraud-{uuid.uuid4().hex[:8]}"
    publish = ("registry", "publish", name, "--onnx", str(onnx), "--signature", str(sig), "--home", str(home))
    result = await _cli(bootstrap, *publish)
    assert result.exit_code == 0, result.output
    result = await _cli(bootstrap, "registry", "catalogue", "--home", str(home), "--ttl-hours", "1")
    assert result.exit_code == 0, result.output
    raw = (home / CATALOGUE_FILE).read_bytes()
    catalogue = verify_catalogue(
        raw, TrustedKeys.load(home / "trusted-keys.json"), now_ms=int(time.time() * 1000)
    )
    entry = catalogue.entry(name, "signed")
    assert entry is not None
    assert (entry.version, entry.route, entry.input.shape, entry.input.kind) == (
        1,
        "stable",
        (FEATURES,),
        "embedding",
    )
    assert LocalArtifactStore(home / "artifacts").get(entry.sha256) == model.onnx
    assert catalogue.expires_ms - catalogue.issued_ms == 3_600_000
