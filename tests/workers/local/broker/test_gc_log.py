"""The local broker keeps its garbage collector's log beside its server log."""

from __future__ import annotations

import pytest

from edgestream.workers.local.broker.java import GC_LOG_NAME
from edgestream.workers.local.broker.state import BrokerState

pytestmark = pytest.mark.broker


def test_the_running_broker_logs_its_collector(kafka_broker: BrokerState) -> None:
    if kafka_broker.pid < 0:
        pytest.skip("an external broker (EDGESTREAM_TEST_BOOTSTRAP): not started by us")
    gc_log = kafka_broker.log_dir / GC_LOG_NAME
    assert gc_log.is_file(), sorted(p.name for p in kafka_broker.log_dir.iterdir())
    first = gc_log.read_text(errors="replace").splitlines()[0]
    assert first.endswith("[info][gc] Using G1"), first
