"""The broker warm-up against the session's broker: its traffic flows end to end, and it leaves
nothing behind."""

from __future__ import annotations

import pytest

from edgestream.pipeline import kafka
from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.local.broker.warmup import REPLIES_TOPIC, REQUESTS_TOPIC, warm_broker

pytestmark = pytest.mark.broker


async def _topics(connection: KafkaSettings) -> set[str]:
    async with kafka.started(kafka.admin(connection, "test-warmup-list")) as admin:
        return set(await admin.list_topics())


async def test_every_request_is_relayed_replied_and_committed_then_the_topics_go(
    bootstrap: KafkaSettings,
) -> None:
    report = await warm_broker(bootstrap, seconds=1.0, rate_per_s=200.0, record_bytes=256)

    assert 150 <= report.sent <= 250  # 200/s for 1 s, paced in 10 ms ticks
    assert report.relayed == report.sent  # read back read_committed, every one
    assert report.replies_read >= report.sent  # the fast replies (and committed copies) came back
    assert report.transactions >= 2  # committed at most every 100 ms over a second
    topics = await _topics(bootstrap)
    assert REQUESTS_TOPIC not in topics
    assert REPLIES_TOPIC not in topics


async def test_a_warm_up_left_behind_is_reused(bootstrap: KafkaSettings) -> None:
    from aiokafka.admin import NewTopic

    async with kafka.started(kafka.admin(bootstrap, "test-warmup-leftover")) as admin:
        await admin.create_topics([NewTopic(REQUESTS_TOPIC, 3, 1)])

    report = await warm_broker(bootstrap, seconds=0.3, rate_per_s=100.0, record_bytes=64)

    assert report.sent > 0
    assert report.relayed == report.sent
    assert REQUESTS_TOPIC not in await _topics(bootstrap)
