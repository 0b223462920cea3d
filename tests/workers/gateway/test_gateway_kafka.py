"""The gateway against the real broker, as its own principal ``gateway-<region>`` within its ACLs: a
device's envelope goes through the gateway to a real edge worker, whose sealed reply comes back to that
device's session only and opens with its key (never with another device's); a device report lands on
``edge.<region>.reports`` keyed by its device."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgpack
import pytest

from edgestream.device.gateway_client import GatewayTransport
from edgestream.device.transport import Accepted, Reply
from edgestream.pipeline.contract.codec import encode_tensor
from edgestream.pipeline.contract.envelope import new_request_id, seal
from edgestream.pipeline.contract.reply import ReplyAuthenticationFailed, open_reply
from edgestream.pipeline.models import load_dataset, spec
from edgestream.pipeline.security.identities import Identity
from edgestream.topics.catalogue import reports_topic
from edgestream.workers.gateway.server import Gateway
from edgestream.workers.local.broker.state import BrokerState

from ..conftest import EdgeRegion, RunningWorker, read_topic
from .harness import GatewayHome

pytestmark = pytest.mark.broker


async def test_a_real_reply_reaches_only_its_device_and_opens_only_with_its_key(
    edge_region: EdgeRegion, running_worker: RunningWorker, kafka_broker: BrokerState, tmp_path: Path
) -> None:
    region, ring = edge_region.name, edge_region.keyring
    kid = ring.current_key_id(region)
    keys = {d: ring.device_key(region, d, kid) for d in ("phone-a", "phone-b")}
    home = GatewayHome(tmp_path, region=region)
    home.enrol(keys, key_id=kid)
    kafka = edge_region.bootstrap
    if kafka_broker.security_protocol == "SSL":
        kafka = kafka_broker.kafka(Identity.gateway(region))
    await running_worker()
    async with Gateway(home.settings(kafka)) as gateway:
        a, b = (GatewayTransport(home.endpoint(gateway), d, keys[d], kid) for d in keys)
        await a.connect(10)
        await b.connect(10)
        x = load_dataset("embedding").X_test[0]
        rid = new_request_id()
        body = encode_tensor(x, spec("embedding-scorer").input_dtype)
        envelope = seal(
            body,
            device_key=keys["phone-a"],
            device_id="phone-a",
            key_id=kid,
            kind="embedding",
            model="embedding-scorer",
            request_id=rid,
            capture_time_ms=int(time.time() * 1000),
        )
        await a.send("embedding", envelope)
        reply: Reply | None = None
        async with asyncio.timeout(60):
            while reply is None:
                event = await a.events.get()
                if isinstance(event, Reply):
                    reply = event
                elif isinstance(event, Accepted):
                    assert event.request_id == rid  # acked by the broker before the answer
        assert reply.request_id == rid
        record = open_reply(reply.sealed, keys["phone-a"], region)
        assert record.request_id == rid
        with pytest.raises(ReplyAuthenticationFailed):
            open_reply(reply.sealed, keys["phone-b"], region)
        await b.sync_clock()
        assert not any(isinstance(e, Reply) for e in _drain(b))  # phone-b saw nothing of phone-a's

        await a.report(msgpack.packb({"kind": "agreement", "n": 1}))
        [report] = await read_topic(edge_region.bootstrap, reports_topic(region), expect=1, timeout_s=30)
        assert (report.key, msgpack.unpackb(report.value)) == (b"phone-a", {"kind": "agreement", "n": 1})
        assert gateway.metrics.replies["routed"]._value.get() == 1
        await a.close()
        await b.close()


def _drain(t: GatewayTransport) -> list[object]:
    out: list[object] = []
    while not t.events.empty():
        out.append(t.events.get_nowait())
    return out
