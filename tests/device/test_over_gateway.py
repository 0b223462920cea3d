"""The SDK over the real gateway and its WebSocket transport (the gateway's Kafka clients are its
test stand-ins): the catalogue and the fallback model come through the gateway and verify, the edge
answers, a missed deadline falls back, the late reply is reconciled, and the device report reaches
``edge.<region>.reports`` keyed by the device. ``test_over_gateway_processes.py`` runs the same SDK
against a real gateway process, edge worker and broker."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from edgestream.device.answers import ClientSettings
from edgestream.device.client import EdgeClient
from edgestream.device.gateway_client import GatewayTransport
from edgestream.device.identity import DeviceIdentity, RegionKey
from edgestream.pipeline.contract.devicereports import DeviceReport
from edgestream.pipeline.contract.envelope import decode_envelope
from edgestream.pipeline.contract.records import ResultRecord
from edgestream.pipeline.contract.reply import ReplyHeader, ReplyKey, seal_reply
from edgestream.pipeline.models import ModelStore, load_dataset
from edgestream.pipeline.registry import (
    LocalArtifactStore,
    Manifest,
    ModelState,
    SigningKey,
    TrustedKeys,
    publish,
)
from edgestream.pipeline.registry.devicecatalogue import CATALOGUE_FILE, build_catalogue, sign_catalogue
from tests.workers.gateway import harness

FAMILY = "embedding-scorer"
DEVICE = "phone-7"


def _registry(root: Path) -> tuple[SigningKey, bytes]:
    """A registry home the gateway serves from: the tiny model stored, a signed catalogue naming it."""
    tiny = ModelStore(root / "models").get(FAMILY, "tiny")
    data = tiny.path.read_bytes()
    LocalArtifactStore(root / "registry" / "artifacts").put(data)
    key = SigningKey.generate()
    manifest = Manifest(FAMILY, 1, "tiny", tiny.sha256, len(data), "float16", (30,))
    state = publish(ModelState(FAMILY), key.sign(manifest), now_ms=1)
    catalogue = build_catalogue({FAMILY: state}, now_ms=int(time.time() * 1000) - 1000)
    (root / "registry" / CATALOGUE_FILE).write_bytes(sign_catalogue(key, catalogue))
    return key, data


async def _edge(producer: Any, replies: Any, device_key: bytes, delay: dict[str, float]) -> None:
    """Answers every envelope the gateway produced, after ``delay["s"]``, with class 0."""
    seen = 0
    while True:
        await asyncio.sleep(0.002)
        for produced in producer.sent[seen:]:
            seen += 1
            if ".ingest." not in produced.topic:
                continue
            env = decode_envelope(produced.value, max_envelope_bytes=1 << 20)
            record = ResultRecord(
                env.request_id, env.device_id, env.model, 1, 0, (0.99, 0.01), 0, 0, 0, 1, "n", "eu-west", 1
            )
            header = ReplyHeader(env.request_id, env.key_id, env.model, 1)
            sealed = seal_reply(record.to_bytes(), ReplyKey(device_key), header, "eu-west")
            asyncio.get_running_loop().call_later(delay["s"], replies.push, DEVICE, sealed)


async def test_the_sdk_over_the_gateway(tmp_path: Path) -> None:
    home = harness.GatewayHome(tmp_path)
    device_key = harness.device_key(DEVICE)
    home.enrol({DEVICE: device_key})
    signer, _ = _registry(tmp_path)
    xs = load_dataset("embedding").X_test[:2]
    identity = DeviceIdentity.of(DEVICE, {"eu-west": RegionKey(1, device_key)})

    def make(endpoint: Any) -> Any:
        key = identity.keys[endpoint.region]
        return GatewayTransport(endpoint, identity.device_id, key.device_key, key.key_id)

    async with harness.fake_gateway(home) as (gateway, producer, replies):
        delay = {"s": 0.0}
        edge = asyncio.create_task(_edge(producer, replies, device_key, delay))
        trusted = TrustedKeys().with_key(signer.public_raw)
        settings = ClientSettings(tick_s=0.01, report_interval_s=0.2)
        client = EdgeClient(identity, [home.endpoint(gateway)], make, trusted, tmp_path / "cache", settings)
        try:
            await client.start()
            answer = await client.infer(xs[0], 2000, kind="embedding")
            assert (answer.source, answer.label) == ("edge", 0)
            delay["s"] = 0.5
            late = await client.infer(xs[1], 100, kind="embedding")
            assert (late.source, late.why) == ("fallback", "deadline")
            await asyncio.sleep(1.0)
            assert client.stats.agreed + client.stats.disagreed == 1
            reports = [p for p in producer.sent if p.topic == "edge.eu-west.reports"]
            assert [p.key for p in reports] == [DEVICE.encode()]
            (row,) = DeviceReport.from_bytes(reports[0].value).agreement
            assert (row.model, row.agree + row.disagree) == (FAMILY, 1)
        finally:
            edge.cancel()
            await client.close()
