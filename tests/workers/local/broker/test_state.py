"""The state file: a started broker round-trips through it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgestream.workers.local.broker.process import LocalBroker
from edgestream.workers.local.broker.state import BrokerState
from tests.workers.local.broker.helpers import settings_in

if TYPE_CHECKING:
    from pathlib import Path


def test_state_round_trips_through_the_state_file(tmp_path: Path) -> None:
    broker = LocalBroker(settings_in(tmp_path))
    state = BrokerState(
        bootstrap="127.0.0.1:29092",
        controller="127.0.0.1:29093",
        pid=4242,
        log_dir=broker.log_dir,
        data_dir=broker.data_dir,
        started_at=1_700_000_000.25,
    )
    broker.root.mkdir(parents=True)
    broker.state_file.write_text(state.to_json())

    assert BrokerState.from_json(broker.state_file.read_text()) == state
