"""The demo's story in a process of its own, beside the fleet's.

The story stands in for the cloud: it reads the cloud topics (labelled samples, the workers' reports,
the summaries the rollout controller judges), retrains with scikit-learn and signs candidates. That is
seconds of CPU in bursts. Told in the fleet's process, as it was, it took the devices' event loop for
them: a profile of a demo showed the loop decoding labelled samples (``read_labelled``, the
controller's judgements) between the devices' sends, and scikit-learn's import and training holding
the interpreter in a thread; the loop's peak lag was 2.7 s, and 6.4% of the Kafka-native devices'
requests were answered by their fallback. Here it runs as the rest of the demo's cloud part does: in
its own process (``spawn``), niced (``DemoSettings.cloud_nice``) and under the idle scheduling
policy (``DemoSettings.cloud_idle``), so the edge path and the devices get the CPU first. The fleet
hears from it through a pipe only what the devices and the console need: which inputs to send, the
story's events as they happen, and its report when it ends.

The parent renices the process (and sets its policy) as soon as it exists (the child's imports are a
second of CPU), the child says when it is ready (the story's modules imported and the story made),
and the story begins when the parent says go: the demo starts its fleet once the child is ready and
says go when the fleet starts sending, so the child's start does not share the CPU with the first
requests (in a demo whose fleet started beside it, the first 0.3 s of device round trips took up to
100 ms: 33 of the run's 91 direct requests over its p99) and the devices' baseline is counted from
their first request.

Messages, child to parent: ``("ready",)`` first, then ``("inputs", Inputs)``, ``("event",
StoryEvent)``, then ``("report", StoryReport)`` or ``("error", str)`` last. Parent to child:
``("go",)`` first, then ``("cancel",)`` (the fleet's time ran out first: the story records a stall and
reports). The pipe's end (either side gone) ends the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final

from edgestream.pipeline import eventloop
from edgestream.pipeline.errors import EdgestreamError
from edgestream.pipeline.eventloop import EventLoop
from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.local.fleet_settings import Inputs
from edgestream.workers.local.processes import schedule_idle
from edgestream.workers.local.story import Story, StoryEvent, StoryReport, StorySettings

log = logging.getLogger(__name__)

REPORT_WAIT_S: Final = 60.0
"""How long a cancelled story may take to stop and send its report."""
_LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class StoryFailed(EdgestreamError):
    """The story's process failed (an exception in the story, or the process died)."""

    reason = "story_failed"


@dataclass(frozen=True, slots=True)
class StoryArgs:
    """What the story's process needs to tell the story (all of it picklable)."""

    settings: StorySettings
    kafka: KafkaSettings
    home: Path
    view_url: str
    regions: frozenset[str]
    reference: int
    started_at: float
    """The fleet's start (unix seconds): the story's time zero."""
    event_loop: EventLoop = "uvloop"
    nice: int = 0
    """Added to the parent's CPU niceness for the process, from its start."""
    idle: bool = False
    """The process runs under the ``SCHED_IDLE`` policy (``processes.schedule_idle``), from its start."""
    log_level: int = logging.WARNING


async def tell_story(
    args: StoryArgs,
    *,
    set_inputs: Callable[[Inputs], None],
    on_event: Callable[[StoryEvent], None],
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
    go: asyncio.Event | None = None,
    target: Callable[[Connection, StoryArgs], None] | None = None,
) -> StoryReport:
    """Tell the story in a child process; ``set_inputs`` and ``on_event`` are called in this loop as its
    messages arrive; ``ready`` is set when the child says it is ready, ``stop`` when it ends (always).
    The story begins once ``go`` is set (at once without one).
    Cancelled, it asks the story to stop and still returns its report (with the stall recorded), as
    :meth:`Story.run` does. ``target`` is what the child runs (the story by default; an importable
    function speaking the same messages)."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(
        target=target or _child, args=(theirs, args), name="edgestream-story", daemon=True
    )
    process.start()
    theirs.close()
    if process.pid is not None:  # set once started
        _renice(process.pid, args.nice)
        if args.idle:
            schedule_idle(process.pid)
    saying_go = asyncio.create_task(_say_go(ours, go))
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    reader = threading.Thread(target=_read, args=(ours, loop, inbox), name="story-pipe", daemon=True)
    reader.start()
    try:
        return await _follow(inbox, set_inputs, on_event, ready)
    except asyncio.CancelledError:
        with contextlib.suppress(OSError):
            ours.send(("cancel",))
        try:
            async with asyncio.timeout(REPORT_WAIT_S):
                return await _follow(inbox, set_inputs, on_event, ready)
        except TimeoutError:
            raise StoryFailed(
                f"the story's process did not report within {REPORT_WAIT_S:g} s of being stopped"
            ) from None
    finally:
        stop.set()
        saying_go.cancel()
        await asyncio.gather(saying_go, return_exceptions=True)
        await asyncio.to_thread(process.join, 5.0)
        if process.is_alive():
            process.kill()
            await asyncio.to_thread(process.join, 5.0)
        ours.close()


async def end_story(told: asyncio.Task[StoryReport], stop: asyncio.Event) -> StoryReport:
    """The report of ``told`` (a :func:`tell_story` task) once the fleet beside it has stopped: a story
    still running is cancelled (it reports its stall); one that has ended (``stop`` set: it reported,
    or failed) is not, and is awaited while its process is reaped. Cancelling it there would lose the
    report it already has: the child can take a while to exit on a busy box, and the fleet stops as
    soon as ``stop`` is set."""
    if not stop.is_set():
        told.cancel()
    return await told


async def _say_go(conn: Connection, go: asyncio.Event | None) -> None:
    """Tell the child to begin, once ``go`` is set (at once without one)."""
    if go is not None:
        await go.wait()
    with contextlib.suppress(OSError):
        conn.send(("go",))


def _renice(pid: int, nice: int) -> None:
    """Give process ``pid`` this process's niceness plus ``nice`` (a process may lower the priority of
    its own user's processes). One that has exited is left alone; one that may not be reniced runs at
    this process's priority, and that is logged."""
    if nice:
        try:
            os.setpriority(os.PRIO_PROCESS, pid, os.getpriority(os.PRIO_PROCESS, 0) + nice)
        except ProcessLookupError:
            pass
        except OSError as err:
            log.warning("the story's process could not be niced: %s", err)


async def _follow(
    inbox: asyncio.Queue[tuple[Any, ...]],
    set_inputs: Callable[[Inputs], None],
    on_event: Callable[[StoryEvent], None],
    ready: asyncio.Event | None,
) -> StoryReport:
    while True:
        message = await inbox.get()
        kind = message[0]
        if kind == "ready":
            if ready is not None:
                ready.set()
        elif kind == "inputs":
            set_inputs(message[1])
        elif kind == "event":
            on_event(message[1])
        elif kind == "report":
            report: StoryReport = message[1]
            return report
        elif kind == "error":
            raise StoryFailed(f"the story failed in its process:\n{message[1]}")
        else:  # "gone"
            raise StoryFailed("the story's process ended without a report")


def _read(conn: Connection, loop: asyncio.AbstractEventLoop, inbox: asyncio.Queue[tuple[Any, ...]]) -> None:
    """The parent's reader thread: every message into ``inbox``; ``("gone",)`` when the pipe closes."""
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            message = ("gone",)
        try:
            loop.call_soon_threadsafe(inbox.put_nowait, message)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            return
        if message[0] in ("report", "error", "gone"):
            return


# -- the child ---------------------------------------------------------------------------------------


def _child(conn: Connection, args: StoryArgs) -> None:
    logging.basicConfig(level=args.log_level, format=_LOG_FORMAT)
    try:
        report = eventloop.run(_tell(conn, args), args.event_loop)
    except BaseException:  # whatever it was, the parent must hear of it
        with contextlib.suppress(OSError):
            conn.send(("error", traceback.format_exc()))
        raise
    with contextlib.suppress(OSError):
        conn.send(("report", report))
    conn.close()


async def _tell(conn: Connection, args: StoryArgs) -> StoryReport:
    story = Story(
        args.settings,
        kafka=args.kafka,
        home=args.home,
        set_inputs=lambda inputs: conn.send(("inputs", inputs)),
        started_at=args.started_at,
        view_url=args.view_url,
        regions=args.regions,
        reference=args.reference,
        on_event=lambda event: conn.send(("event", event)),
    )
    conn.send(("ready",))
    loop = asyncio.get_running_loop()
    go, stopped = asyncio.Event(), asyncio.Event()
    told: asyncio.Task[StoryReport] | None = None

    def readable() -> None:  # go first; then the parent's cancel, or its end: stop the story either way
        message: object = None
        with contextlib.suppress(EOFError, OSError):
            message = conn.recv()
        if message == ("go",) and not go.is_set():
            go.set()
            return
        loop.remove_reader(conn.fileno())
        stopped.set()
        if told is not None:
            told.cancel()

    loop.add_reader(conn.fileno(), readable)
    try:
        waits = [asyncio.create_task(go.wait()), asyncio.create_task(stopped.wait())]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()
        if not go.is_set():
            story.report.stalled = "stopped before the fleet started sending"
            return story.report
        told = asyncio.create_task(story.run(asyncio.Event()))
        if stopped.is_set():  # the cancel came with the go
            told.cancel()
        return await told
    finally:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(conn.fileno())
