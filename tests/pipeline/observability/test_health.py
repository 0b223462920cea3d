"""Readiness and HealthServer: probe truth, /metrics, strict parsing, slow clients, lifecycle.

Every server test runs a real server on a free loopback port and talks HTTP to it over a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from edgestream.pipeline.observability.health import METRICS_CONTENT_TYPE, HealthServer, Readiness
from edgestream.pipeline.observability.metrics import WorkerMetrics


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


class Reply:
    """A parsed HTTP response."""

    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("ascii").split("\r\n")
        version, status, _ = status_line.split(" ", 2)
        assert version == "HTTP/1.1"
        self.status = int(status)
        self.headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        assert int(self.headers["content-length"]) == len(self.body)
        assert self.headers["connection"] == "close"

    @property
    def text(self) -> str:
        return self.body.decode()


async def send(port: int, raw: bytes, *, eof: bool = False) -> Reply:
    """Send ``raw`` (then EOF if asked), read the response until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        if eof:
            writer.write_eof()
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5.0)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return Reply(data)


async def get(port: int, path: str) -> Reply:
    return await send(port, f"GET {path} HTTP/1.1\r\nHost: test\r\nUser-Agent: t\r\n\r\n".encode())


def server_for(
    readiness: Readiness,
    registry: CollectorRegistry | None = None,
    *,
    port: int = 0,
    read_timeout_s: float = 5.0,
    max_connections: int = 64,
) -> HealthServer:
    return HealthServer(
        live=readiness.live,
        ready=readiness.ready,
        registry=registry if registry is not None else CollectorRegistry(),
        port=port,
        read_timeout_s=read_timeout_s,
        max_connections=max_connections,
    )


# -- Readiness, pure ---------------------------------------------------------------------------------


def test_readiness_needs_models_and_partitions() -> None:
    readiness = Readiness(clock=FakeClock())
    assert readiness.ready() == (False, "models not loaded")
    readiness.partitions_assigned = 2
    assert readiness.ready() == (False, "models not loaded")
    readiness.models_loaded = True
    assert readiness.ready() == (True, "ok")
    readiness.partitions_assigned = 0  # revoked everything: serves nothing
    assert readiness.ready() == (False, "no partitions assigned")
    assert readiness.live() == (True, "ok")  # idle is not dead


def test_fatal_is_neither_live_nor_ready_and_the_first_is_kept() -> None:
    readiness = Readiness(clock=FakeClock())
    readiness.models_loaded, readiness.partitions_assigned = True, 1
    readiness.fail("ProducerFenced()")
    readiness.fail("later")
    assert readiness.fatal == "ProducerFenced()"
    assert readiness.live() == (False, "fatal: ProducerFenced()")
    assert readiness.ready() == (False, "fatal: ProducerFenced()")


def test_a_stalled_loop_is_not_live_until_it_progresses() -> None:
    clock = FakeClock()
    readiness = Readiness(stall_after_s=30.0, clock=clock)
    readiness.models_loaded, readiness.partitions_assigned = True, 1
    clock.now_s += 30.0
    assert readiness.live() == (True, "ok")
    clock.now_s += 0.5
    alive, reason = readiness.live()
    assert not alive
    assert reason == "stalled: no progress for 30.5 s (limit 30.0 s)"
    assert readiness.ready() == (False, reason)
    readiness.progress()
    assert readiness.last_progress_s == clock.now_s
    assert readiness.live() == (True, "ok")
    assert readiness.ready() == (True, "ok")


def test_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="stall_after_s"):
        Readiness(stall_after_s=0.0)
    with pytest.raises(ValueError, match="read_timeout_s"):
        server_for(Readiness(), read_timeout_s=0.0)
    with pytest.raises(ValueError, match="max_connections"):
        server_for(Readiness(), max_connections=0)


# -- probes over HTTP --------------------------------------------------------------------------------


async def test_probes_follow_the_readiness_state() -> None:
    clock = FakeClock()
    readiness = Readiness(stall_after_s=30.0, clock=clock)
    async with server_for(readiness) as server:
        port = server.port
        live, ready = await get(port, "/livez"), await get(port, "/readyz")
        assert (live.status, live.text) == (200, "ok\n")
        assert (ready.status, ready.text) == (503, "models not loaded\n")
        assert ready.headers["content-type"] == "text/plain; charset=utf-8"

        readiness.models_loaded = True
        assert (await get(port, "/readyz")).text == "no partitions assigned\n"
        readiness.partitions_assigned = 3
        ready = await get(port, "/readyz")
        assert (ready.status, ready.text) == (200, "ok\n")

        clock.now_s += 31.0  # the loop stops turning
        live, ready = await get(port, "/livez"), await get(port, "/readyz")
        assert live.status == 503
        assert live.text.startswith("stalled: no progress for 31.0 s")
        assert ready.status == 503
        readiness.progress()
        assert (await get(port, "/livez")).status == 200

        readiness.fail("ProducerFenced('edge-eu-west-0')")
        live, ready = await get(port, "/livez"), await get(port, "/readyz")
        assert (live.status, live.text) == (503, "fatal: ProducerFenced('edge-eu-west-0')\n")
        assert ready.status == 503


async def test_a_real_http_client() -> None:
    readiness = Readiness()
    async with server_for(readiness) as server:

        def fetch(path: str) -> tuple[int, bytes]:
            url = f"http://127.0.0.1:{server.port}{path}"
            try:
                with urllib.request.urlopen(url, timeout=5.0) as response:
                    return int(response.status), bytes(response.read())
            except urllib.error.HTTPError as err:
                with err:
                    return err.code, bytes(err.read())

        assert await asyncio.to_thread(fetch, "/livez") == (200, b"ok\n")
        assert await asyncio.to_thread(fetch, "/readyz?verbose=1") == (503, b"models not loaded\n")
        assert (await asyncio.to_thread(fetch, "/nope"))[0] == 404


async def test_metrics_endpoint_serves_the_registry() -> None:
    metrics = WorkerMetrics(region="eu-west", node="n1")
    metrics.consumed(5)
    metrics.consumed(2)
    metrics.answered(
        "frame-classifier", 3, end_to_end_s=0.012, round_trip_s=0.011, queue_wait_s=0.001, batch_wait_s=0.002
    )
    metrics.dead_letter("bad_tag")
    metrics.commit(committed=True, seconds=0.02)
    metrics.commit(committed=False, seconds=0.5)
    metrics.unit(0.03)
    metrics.inference("frame-classifier", 3, 8, 0.003)
    metrics.rewind()
    metrics.set_partitions(4)
    metrics.set_paused(True)
    metrics.model_info("frame-classifier", 3, "ab" * 32, "CPUExecutionProvider")
    async with server_for(Readiness(), metrics.registry) as server:
        reply = await get(server.port, "/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"] == METRICS_CONTENT_TYPE
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(reply.text)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, frozenset({"region": "eu-west", "node": "n1", **labels}.items()))]

    fc = "frame-classifier"
    assert value("edgestream_records_consumed_total") == 7
    assert value("edgestream_results_total", model=fc, version="3") == 1
    assert value("edgestream_dead_letters_total", reason="bad_tag") == 1
    assert value("edgestream_transactions_total", outcome="committed") == 1
    assert value("edgestream_transactions_total", outcome="aborted") == 1
    assert value("edgestream_rewinds_total") == 1
    assert value("edgestream_end_to_end_seconds_bucket", le="0.02") == 1
    assert value("edgestream_end_to_end_seconds_bucket", le="0.01") == 0
    assert value("edgestream_commit_seconds_count") == 2
    assert value("edgestream_unit_seconds_count") == 1
    assert value("edgestream_round_trip_seconds_bucket", model=fc, version="3", le="0.02") == 1
    assert value("edgestream_inference_seconds_sum", model=fc, version="3") == pytest.approx(0.003)
    assert value("edgestream_batch_size_bucket", model=fc, version="3", le="8.0") == 1
    assert value("edgestream_batch_size_bucket", model=fc, version="3", le="4.0") == 0
    assert value("edgestream_partitions_assigned") == 4
    assert value("edgestream_paused") == 1
    assert value("edgestream_in_flight_records") == 0
    info = {"version": "3", "sha256": "ab" * 32, "provider": "CPUExecutionProvider"}
    assert value("edgestream_model_info", model=fc, **info) == 1


# -- bad requests ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"GET /livez HTTP/1.0\r\n\r\n", 200),
        (b"POST /livez HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405),
        (b"HEAD /livez HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"get /livez HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
        (b"\r\n\r\n", 400),
        (b"GET /livez\r\nHost: x\r\n\r\n", 400),
        (b"GET  /livez HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET livez HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /livez HTTP/2.0\r\nHost: x\r\n\r\n", 400),
        (b"GET /livez HTTP/1.1\r\n\r\n", 400),
        (b"GET /livez HTTP/1.1\r\nHost x\r\n\r\n", 400),
        (b"GET /livez HTTP/1.1\r\nHost : x\r\n\r\n", 400),
        (b"GET /livez HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
        (b"GET /livez HTTP/1.1\r\nHost: x\nX-Smuggled: y\r\n\r\n", 400),
        (b"GET /l\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
    ],
)
async def test_bad_requests_get_an_answer_and_the_server_goes_on(raw: bytes, status: int) -> None:
    async with server_for(Readiness()) as server:
        reply = await send(server.port, raw)
        assert reply.status == status
        if status == 405:
            assert reply.headers["allow"] == "GET"
        assert (await get(server.port, "/livez")).status == 200


async def test_a_request_cut_short_is_a_bad_request() -> None:
    async with server_for(Readiness()) as server:
        reply = await send(server.port, b"GET /livez HTTP/1.1\r\nHost: x\r\n", eof=True)
        assert reply.status == 400
        assert (await get(server.port, "/livez")).status == 200


async def test_a_probe_that_raises_is_a_500_not_a_crash() -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("probe bug")

    server = HealthServer(live=broken, ready=Readiness().ready, registry=CollectorRegistry())
    async with server:
        assert (await get(server.port, "/livez")).status == 500
        assert (await get(server.port, "/readyz")).status == 503


# -- slow clients, bounds ----------------------------------------------------------------------------


async def test_a_slowloris_client_does_not_block_others() -> None:
    async with server_for(Readiness(), read_timeout_s=1.0) as server:
        port = server.port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /livez HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
            await writer.drain()
            started_s = time.monotonic()
            answer = asyncio.create_task(reader.read())
            for _ in range(5):
                assert (await get(port, "/livez")).status == 200
            assert not answer.done()  # the others were served while it still waited
            data = await asyncio.wait_for(answer, 5.0)
            waited_s = time.monotonic() - started_s
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        assert Reply(data).status == 408
        assert 0.9 < waited_s < 3.0


async def test_a_trickling_client_is_cut_off_by_the_total_read_timeout() -> None:
    async with server_for(Readiness(), read_timeout_s=0.3) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        started_s = time.monotonic()
        answer = asyncio.create_task(reader.read())
        try:
            for byte in b"GET /livez HTTP/1.1\r\nHost: x\r\n":  # a byte every 50 ms: 1.6 s in all
                if answer.done():
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)
            data = await asyncio.wait_for(answer, 5.0)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        assert Reply(data).status == 408
        assert time.monotonic() - started_s < 1.5  # cut off well before the 1.6 s it would take


async def test_connections_beyond_the_bound_are_closed_at_once() -> None:
    async with server_for(Readiness(), read_timeout_s=5.0, max_connections=2) as server:
        idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
        try:
            await asyncio.sleep(0.05)  # let the server accept them
            started_s = time.monotonic()
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                with contextlib.suppress(ConnectionError):
                    assert await asyncio.wait_for(reader.read(), 5.0) == b""
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
            assert time.monotonic() - started_s < 1.0
        finally:
            for idle_reader, idle_writer in idle:
                idle_writer.write_eof()
                assert Reply(await asyncio.wait_for(idle_reader.read(), 5.0)).status == 400
                idle_writer.close()
                with contextlib.suppress(ConnectionError):
                    await idle_writer.wait_closed()
        assert (await get(server.port, "/livez")).status == 200


# -- lifecycle ---------------------------------------------------------------------------------------


async def test_start_and_stop_are_idempotent_and_stop_frees_the_port() -> None:
    server = server_for(Readiness())
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.port
    await server.stop()  # before start: nothing to do
    await server.start()
    port = server.port
    await server.start()
    assert server.port == port
    assert (await get(port, "/livez")).status == 200
    await server.stop()
    await server.stop()
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.port
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    async with server_for(Readiness(), port=port) as again:
        assert again.port == port
        assert (await get(port, "/livez")).status == 200


async def test_stop_ends_connections_in_progress() -> None:
    server = server_for(Readiness(), read_timeout_s=60.0)
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET /livez HTTP/1.1\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        started_s = time.monotonic()
        await server.stop()
        assert time.monotonic() - started_s < 1.0
        assert await asyncio.wait_for(reader.read(), 5.0) == b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
