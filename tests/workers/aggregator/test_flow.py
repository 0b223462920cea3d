"""The aggregator's flow control: a resume of a running flow keeps what its stream queues hold."""

from __future__ import annotations

from pathlib import Path

import pytest
from mode.utils.queues import FlowControlEvent, FlowControlQueue

from edgestream.workers.aggregator.flow import LiveQueuesFlowControl


def _queued_after(flow: FlowControlEvent, *, suspend_first: bool) -> int:
    """Items left in a stream-like queue (cleared on resume) after a resume of ``flow``."""
    queue: FlowControlQueue[str] = FlowControlQueue(flow_control=flow, clear_on_resume=True)
    flow.resume()  # flow starts suspended, as faust's does
    queue.put_nowait("a record that arrived while the flow ran")
    if suspend_first:
        flow.suspend()
    flow.resume()
    return queue.qsize()


def test_resuming_a_running_flow_keeps_what_is_queued() -> None:
    assert _queued_after(LiveQueuesFlowControl(), suspend_first=False) == 1


def test_mode_s_own_flow_control_empties_the_queue_on_any_resume() -> None:
    """What faust does without it (the record was lost): if mode stops emptying a running flow's
    queues, this fails and ``flow.py`` may go."""
    assert _queued_after(FlowControlEvent(), suspend_first=False) == 0


@pytest.mark.parametrize("flow", [LiveQueuesFlowControl, FlowControlEvent])
def test_resuming_a_suspended_flow_empties_the_queues(flow: type[FlowControlEvent]) -> None:
    """Records queued before a rebalance suspended the flow are fetched again after the seek."""
    assert _queued_after(flow(), suspend_first=True) == 0


def test_the_aggregator_app_uses_it(tmp_path: Path) -> None:
    from edgestream.workers.aggregator.app import AggregatorSettings, build_app

    app = build_app(AggregatorSettings(home=tmp_path))
    assert isinstance(app.flow_control, LiveQueuesFlowControl)
