"""The readiness probe where nothing listens."""

from __future__ import annotations

from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.local.broker.config import free_port
from edgestream.workers.local.broker.probe import ping


def test_ping_is_false_where_nothing_listens() -> None:
    assert ping(KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}"), timeout_s=2) is False
