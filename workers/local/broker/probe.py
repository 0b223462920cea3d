"""Whether a broker answers: a TCP check, then a metadata request for the expected cluster, polled until
the broker is ready, has exited or the deadline passes."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

from edgestream.pipeline.settings import KafkaSettings

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

T = TypeVar("T")

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0
"""Longest one probe (connect, then metadata request) may take."""

_POLL_INTERVAL_S = 0.1


class BrokerExited(Exception):
    """The broker process went away while we waited for it to answer."""


async def own_loop(work: Awaitable[T]) -> T:
    """``work``, then every transport still open on the running loop closed. Only for a loop of its own
    (``asyncio.run(own_loop(...))``): when a timeout cancels an aiokafka client's start mid-connect,
    the connection it was opening is not in the client's pool, so closing the client leaves it open,
    and the garbage collector later reports it as an unclosed socket in whatever runs then (once in a
    test run: a cluster's start left one, and the next test's setup failed on its ``ResourceWarning``)."""
    try:
        return await work
    finally:
        loop = asyncio.get_running_loop()
        for transport in list(getattr(loop, "_transports", {}).values()):
            if transport is not None and not transport.is_closing():
                transport.close()
        await asyncio.sleep(0)  # the transports' close callbacks run before the loop ends


def _tcp_open(host: str, port: int, timeout_s: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


async def _answers_metadata(kafka: KafkaSettings, timeout_s: float, cluster_id: str | None) -> bool:
    from aiokafka.errors import KafkaError

    from edgestream.pipeline import kafka as kafka_clients

    bootstrap = kafka.bootstrap_servers
    admin = kafka_clients.admin(
        kafka, "edgestream-broker-probe", request_timeout_ms=max(1, int(timeout_s * 1000))
    )
    try:
        async with asyncio.timeout(timeout_s + 1.0):
            await admin.start()
            cluster = await admin.describe_cluster()
    except (KafkaError, OSError, TimeoutError) as err:
        log.debug("metadata request to %s failed: %r", bootstrap, err)
        return False
    finally:
        await admin.close()
    if cluster_id is not None and cluster.get("cluster_id") != cluster_id:
        log.debug("%s answers for cluster %s, not %s", bootstrap, cluster.get("cluster_id"), cluster_id)
        return False
    return bool(cluster.get("brokers"))


def ping(kafka: KafkaSettings, timeout_s: float = PROBE_TIMEOUT_S, cluster_id: str | None = None) -> bool:
    """True when the broker answers a metadata request (for ``cluster_id``, if given).

    Safe to call with or without a running event loop: the request runs on a loop of its own, in a thread.
    """
    settings = kafka
    host, _, port = settings.bootstrap_servers.split(",")[0].rpartition(":")
    if not _tcp_open(host, int(port), timeout_s):
        return False
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="broker-ping") as pool:
        probe = pool.submit(lambda: asyncio.run(own_loop(_answers_metadata(settings, timeout_s, cluster_id))))
        return probe.result()


def wait_ready(
    kafka: KafkaSettings, cluster_id: str | None, deadline: float, is_alive: Callable[[], bool]
) -> None:
    """Poll until ``bootstrap`` answers metadata for ``cluster_id`` (not some other broker on that port).

    Raises ``TimeoutError`` at ``deadline`` and ``BrokerExited`` as soon as ``is_alive()`` is false.
    """
    while True:
        if not is_alive():
            raise BrokerExited
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            raise TimeoutError
        if ping(kafka, timeout_s=min(remaining_s, PROBE_TIMEOUT_S), cluster_id=cluster_id):
            return
        time.sleep(min(_POLL_INTERVAL_S, max(0.0, deadline - time.monotonic())))
