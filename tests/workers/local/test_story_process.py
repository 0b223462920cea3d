"""The story's process: what it says reaches the fleet and the console, a cancel still gets its report,
and a failed or vanished child is an error, not a hang."""

from __future__ import annotations

import asyncio
import os
import pickle
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from edgestream.pipeline.learning.rollout import Verdict
from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.local.fleet_settings import Inputs
from edgestream.workers.local.story import StoryEvent, StoryReport, StorySettings
from edgestream.workers.local.story_process import StoryArgs, StoryFailed, end_story, tell_story


def _args(tmp_path: Path, nice: int = 0, *, idle: bool = False) -> StoryArgs:
    return StoryArgs(
        StorySettings(),
        kafka=KafkaSettings(),
        home=tmp_path,
        view_url="http://127.0.0.1:1",
        regions=frozenset({"eu-west"}),
        reference=1,
        started_at=1_000.0,
        nice=nice,
        idle=idle,
    )


def _told(
    tmp_path: Path,
    target: Callable[[Connection, StoryArgs], None] | None,
    *,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
    go: asyncio.Event | None = None,
) -> asyncio.Task[StoryReport]:
    """A story told in a task, its inputs and events ignored."""
    return asyncio.create_task(
        tell_story(
            _args(tmp_path),
            set_inputs=lambda _i: None,
            on_event=lambda _e: None,
            stop=stop or asyncio.Event(),
            ready=ready,
            go=go,
            target=target,
        )
    )


# Children (spawned: importable, at module level), speaking the story process's messages.


def _tells_then_waits_for_cancel(conn: Connection, args: StoryArgs) -> None:
    conn.send(("inputs", "shifted-a"))
    conn.send(("event", StoryEvent(1.5, "shift", "scanners change", None)))
    assert conn.recv() == ("go",)
    assert conn.recv() == ("cancel",)
    report = StoryReport("embedding-scorer", args.reference)
    report.stalled = "the fleet's time limit ended first"
    report.verdicts.append((2.0, Verdict("rollback", ("accuracy",), revision=7)))
    conn.send(("report", report))


def _tells_and_ends(conn: Connection, args: StoryArgs) -> None:
    conn.send(("ready",))
    conn.send(("inputs", "shifted-b"))
    conn.send(("report", StoryReport("embedding-scorer", args.reference, retrained=2)))


def _reports_then_lingers(conn: Connection, args: StoryArgs) -> None:
    import time

    conn.send(("report", StoryReport("embedding-scorer", args.reference, retrained=3)))
    time.sleep(1.5)  # a child slow to exit after its report (a busy box): reaped, not cancelled


def _fails(conn: Connection, args: StoryArgs) -> None:
    conn.send(("error", "Traceback: ValueError: the samples were refused"))


def _dies(conn: Connection, args: StoryArgs) -> None:
    os._exit(3)


def _never_reports(conn: Connection, args: StoryArgs) -> None:
    import time

    (args.home / "pid").write_text(str(os.getpid()))
    conn.send(("inputs", "shifted-a"))
    time.sleep(60)


def _ready_then_waits_for_cancel(conn: Connection, args: StoryArgs) -> None:
    conn.send(("ready",))
    assert conn.recv() == ("go",)
    assert conn.recv() == ("cancel",)
    report = StoryReport("embedding-scorer", args.reference)
    report.stalled = "cancelled"
    conn.send(("report", report))


def _reports_its_niceness(conn: Connection, args: StoryArgs) -> None:
    report = StoryReport("embedding-scorer", args.reference)
    report.stalled = str(os.nice(0))
    conn.send(("report", report))


def _reports_its_policy(conn: Connection, args: StoryArgs) -> None:
    report = StoryReport("embedding-scorer", args.reference)
    report.stalled = str(os.sched_getscheduler(0))
    conn.send(("report", report))


async def test_inputs_and_events_arrive_and_a_cancelled_story_still_reports(tmp_path: Path) -> None:
    inputs: list[Inputs] = []
    events: list[StoryEvent] = []
    heard = asyncio.Event()

    def on_event(event: StoryEvent) -> None:
        events.append(event)
        heard.set()

    stop = asyncio.Event()
    told = asyncio.create_task(
        tell_story(
            _args(tmp_path),
            set_inputs=inputs.append,
            on_event=on_event,
            stop=stop,
            target=_tells_then_waits_for_cancel,
        )
    )
    await asyncio.wait_for(heard.wait(), 60)
    assert inputs == ["shifted-a"]
    assert events == [StoryEvent(1.5, "shift", "scanners change", None)]
    assert not stop.is_set()
    told.cancel()
    report = await told
    assert report.stalled == "the fleet's time limit ended first"
    assert report.verdicts[0][1].revision == 7
    assert stop.is_set()


async def test_a_story_that_ends_sets_stop_and_returns_its_report(tmp_path: Path) -> None:
    inputs: list[Inputs] = []
    stop, ready = asyncio.Event(), asyncio.Event()
    report = await tell_story(
        _args(tmp_path),
        set_inputs=inputs.append,
        on_event=lambda _e: None,
        stop=stop,
        ready=ready,
        target=_tells_and_ends,
    )
    assert (inputs, report.retrained, stop.is_set(), ready.is_set()) == (["shifted-b"], 2, True, True)


async def test_ready_is_what_the_child_says_not_its_start(tmp_path: Path) -> None:
    """A child that never says it is ready (it failed first) leaves ``ready`` unset: the demo's fleet
    waits on it, or on the story's end."""
    ready = asyncio.Event()
    with pytest.raises(StoryFailed):
        await tell_story(
            _args(tmp_path),
            set_inputs=print,
            on_event=print,
            stop=asyncio.Event(),
            ready=ready,
            target=_fails,
        )
    assert not ready.is_set()


async def test_a_story_that_ended_keeps_its_report_when_the_fleet_stops_while_it_is_reaped(
    tmp_path: Path,
) -> None:
    stop = asyncio.Event()
    told = _told(tmp_path, _reports_then_lingers, stop=stop)
    await asyncio.wait_for(stop.wait(), 60)  # the fleet stops here, the child still running
    assert not told.done()
    report = await end_story(told, stop)
    assert (report.retrained, report.stalled) == (3, None)


async def test_a_story_still_running_when_the_fleet_stops_is_cancelled_and_reports(tmp_path: Path) -> None:
    stop = asyncio.Event()
    heard = asyncio.Event()
    told = asyncio.create_task(
        tell_story(
            _args(tmp_path),
            set_inputs=lambda _i: heard.set(),
            on_event=lambda _e: None,
            stop=stop,
            target=_tells_then_waits_for_cancel,
        )
    )
    await asyncio.wait_for(heard.wait(), 60)
    report = await end_story(told, stop)
    assert report.stalled == "the fleet's time limit ended first"


@pytest.mark.parametrize(
    ("target", "match"), [(_fails, "the samples were refused"), (_dies, "without a report")]
)
async def test_a_failed_or_vanished_story_is_an_error(tmp_path: Path, target: object, match: str) -> None:
    stop = asyncio.Event()
    with pytest.raises(StoryFailed, match=match):
        await tell_story(
            _args(tmp_path),
            set_inputs=lambda _i: None,
            on_event=lambda _e: None,
            stop=stop,
            target=target,  # type: ignore[arg-type]
        )
    assert stop.is_set()


async def test_a_niced_story_runs_niced(tmp_path: Path) -> None:
    report = await tell_story(
        _args(tmp_path, nice=4),
        set_inputs=lambda _i: None,
        on_event=lambda _e: None,
        stop=asyncio.Event(),
        target=_reports_its_niceness,
    )
    assert report.stalled == str(os.nice(0) + 4)


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="the SCHED_IDLE policy is Linux's")
@pytest.mark.parametrize("idle", [True, False])
async def test_an_idle_story_runs_under_the_idle_policy(tmp_path: Path, idle: bool) -> None:
    report = await tell_story(
        _args(tmp_path, idle=idle),
        set_inputs=lambda _i: None,
        on_event=lambda _e: None,
        stop=asyncio.Event(),
        target=_reports_its_policy,
    )
    assert report.stalled == str(os.SCHED_IDLE if idle else os.SCHED_OTHER)


def test_what_crosses_the_pipe_pickles(tmp_path: Path) -> None:
    args = _args(tmp_path)
    assert pickle.loads(pickle.dumps(args)) == args
    report = StoryReport("embedding-scorer", 1, retrained=2)
    report.events.append(StoryEvent(3.0, "drift", "flagged", 1))
    assert pickle.loads(pickle.dumps(report)) == report


async def test_a_story_that_does_not_stop_when_asked_is_an_error_and_its_process_is_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgestream.workers.local import story_process

    monkeypatch.setattr(story_process, "REPORT_WAIT_S", 0.5)
    running = asyncio.Event()
    told = asyncio.create_task(
        tell_story(
            _args(tmp_path),
            set_inputs=lambda _i: running.set(),
            on_event=lambda _e: None,
            stop=asyncio.Event(),
            target=_never_reports,
        )
    )
    await asyncio.wait_for(running.wait(), 60)
    told.cancel()
    with pytest.raises(StoryFailed, match=r"did not report within 0\.5 s"):
        await told
    pid = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(pid, 0)


async def test_the_demo_starts_its_fleet_once_the_story_is_ready_or_has_failed(tmp_path: Path) -> None:
    from edgestream.workers.local.demo import _story_ready

    stop, ready = asyncio.Event(), asyncio.Event()
    told = _told(tmp_path, _ready_then_waits_for_cancel, stop=stop, ready=ready)
    await _story_ready(told, ready, 60)
    assert ready.is_set()
    assert not told.done()
    told.cancel()
    assert (await told).stalled == "cancelled"

    failed = asyncio.create_task(
        tell_story(_args(tmp_path), set_inputs=print, on_event=print, stop=asyncio.Event(), target=_fails)
    )
    with pytest.raises(StoryFailed, match="the samples were refused"):
        await _story_ready(failed, asyncio.Event(), 60)

    silent = asyncio.create_task(asyncio.sleep(60))
    with pytest.raises(StoryFailed, match="not ready within"):
        await _story_ready(silent, asyncio.Event(), 0.1)  # type: ignore[arg-type]
    silent.cancel()
    await asyncio.gather(silent, return_exceptions=True)


def _reports_when_told_to_go(conn: Connection, args: StoryArgs) -> None:
    import time

    conn.send(("ready",))
    started = time.monotonic()
    assert conn.recv() == ("go",)
    report = StoryReport("embedding-scorer", args.reference)
    report.stalled = f"{time.monotonic() - started:.3f}"
    conn.send(("report", report))


async def test_the_story_begins_when_the_parent_says_go(tmp_path: Path) -> None:
    """The child is ready, and waits for go: the demo says it when its fleet starts sending, so the
    devices' baseline counts from their first request."""
    ready, go = asyncio.Event(), asyncio.Event()
    told = _told(tmp_path, _reports_when_told_to_go, ready=ready, go=go)
    await asyncio.wait_for(ready.wait(), 60)
    await asyncio.sleep(0.5)
    assert not told.done()
    go.set()
    report = await asyncio.wait_for(told, 60)
    assert report.stalled is not None
    assert float(report.stalled) >= 0.4  # it waited for go, not only for its own start


async def test_a_story_stopped_before_go_reports_without_beginning(tmp_path: Path) -> None:
    """The real child: ready once its story is made; cancelled before go (the fleet never sent), it
    reports the stall without running a step (nothing here could answer one)."""
    from edgestream.pipeline.registry.signing import SIGNING_KEY_FILE, SigningKey

    SigningKey.generate().save(tmp_path / "registry" / SIGNING_KEY_FILE)
    ready = asyncio.Event()
    told = _told(tmp_path, None, ready=ready, go=asyncio.Event())
    await asyncio.wait_for(ready.wait(), 120)
    told.cancel()
    report = await asyncio.wait_for(told, 120)
    assert report.stalled == "stopped before the fleet started sending"
    assert report.retrained is None
