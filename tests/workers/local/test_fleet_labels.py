"""The demo's labels as a backend sends them, on the real TLS broker with the production ACLs.

The fleet is given only the devices' credentials, which may not write ``cloud.labels`` (checked here
too). Its labels arrive all the same, one per request it sent, because it sends them as
``backend-<region>`` with a certificate issued from the PKI as the devices' are; and that identity may
not write ingest. So every demo run proves the backend principal can do its one write.
"""

from __future__ import annotations

import pytest
from aiokafka.errors import TopicAuthorizationFailedError

from edgestream.pipeline import kafka
from edgestream.pipeline.contract.envelope import decode_envelope
from edgestream.pipeline.security.identities import Identity
from edgestream.pipeline.security.pki import Pki
from edgestream.pipeline.settings import KafkaSettings, Region
from edgestream.topics.catalogue import KINDS, LABELS_TOPIC, ingest_topic, parse_topic
from edgestream.workers.local.broker.state import BrokerState
from edgestream.workers.local.fleet import Fleet
from edgestream.workers.local.fleet_kafka import backend_kafka
from edgestream.workers.local.fleet_settings import MODEL_FOR_KIND, FleetSettings
from edgestream.workers.retrainer import read_cloud

from ..conftest import EdgeRegion

pytestmark = pytest.mark.broker

MAX_ENVELOPE_BYTES = 1 << 22
"""Larger than any envelope the fleet sends."""


def _settings(
    edge_region: EdgeRegion, kafka_broker: BrokerState, devices_only: KafkaSettings
) -> FleetSettings:
    """A short fleet with no worker to answer it (every request falls back), labelling every request."""
    return FleetSettings(
        devices=3,
        rate_per_s=20.0,
        duration_s=1.0,
        bad_fraction=0.0,  # every request sent is a good one, and labelled
        deadline_ms=50.0,
        drain_s=0.0,
        regions=(Region(name=edge_region.name, lat=0.0, lon=0.0),),
        kafka=devices_only,
        tls_root=kafka_broker.tls_root,
        home=edge_region.home,
        key_file=edge_region.home / f"keys-{edge_region.name}.json",
        enrol=False,
        label_fraction=1.0,
    )


async def _refused(settings: KafkaSettings, topic: str) -> bool:
    """Whether the broker refuses ``settings``' principal a write to ``topic``."""
    async with kafka.started(kafka.producer(settings, "test-fleet-labels-acl")) as producer:
        try:
            await producer.send_and_wait(topic, b"x", key=b"terminal-1")
        except TopicAuthorizationFailedError:
            return True
    return False


async def test_the_fleet_sends_its_labels_as_the_regions_backend(
    edge_region: EdgeRegion, kafka_broker: BrokerState
) -> None:
    if kafka_broker.security_protocol != "SSL":
        pytest.skip("identities need the TLS broker (EDGESTREAM_TEST_BOOTSTRAP is plaintext)")
    region = edge_region.name
    devices_only = kafka_broker.kafka(Identity.device(region))
    assert await _refused(devices_only, LABELS_TOPIC), "the devices' identity may not write labels"
    settings = _settings(edge_region, kafka_broker, devices_only)

    report = await Fleet(settings, edge_region.keyring).run()
    sent = report.totals().sent
    assert sent > 0

    ingest = [ingest_topic(region, kind) for kind in KINDS]
    tps = kafka.partitions((topic, parse_topic(topic).spec.partitions) for topic in ingest)
    envelopes = await kafka.read_all(edge_region.bootstrap, tps, client_id="test-ingest", timeout_ms=30_000)
    requests = {
        env.request_id: env.model
        for env in (decode_envelope(r.value or b"", max_envelope_bytes=MAX_ENVELOPE_BYTES) for r in envelopes)
    }
    assert len(requests) == sent
    labels = {label.request_id: label.model for label in (await read_cloud(edge_region.bootstrap)).labels}
    assert {rid: labels.get(rid) for rid in requests} == requests, "one label per request, of its model"
    assert set(requests.values()) <= set(MODEL_FOR_KIND.values())

    backend = backend_kafka(settings, region)
    assert kafka_broker.tls_root is not None
    assert backend.files == Pki(kafka_broker.tls_root).files(Identity.backend(region))
    assert await _refused(backend, ingest_topic(region, "embedding")), "a backend may not write ingest"
