"""The broker's TLS reload: handshakes refused while the broker swaps its SSL engine are retried
(with the real backoff, 0.5 s then 1 s)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest
from aiokafka.errors import ClusterAuthorizationFailedError, KafkaConnectionError, NodeNotReadyError

from edgestream.pipeline.errors import BrokerError
from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.local.broker import tls

KAFKA = KafkaSettings(bootstrap_servers="127.0.0.1:1")


def _failing(errors: list[Exception]) -> tuple[list[int], object]:
    calls: list[int] = []

    async def alter(kafka: KafkaSettings, configs: Mapping[str, str]) -> None:
        del kafka, configs
        calls.append(1)
        if errors:
            raise errors.pop(0)

    return calls, alter


@pytest.mark.parametrize("error", [KafkaConnectionError("closed"), NodeNotReadyError("node 1")])
async def test_a_refused_or_not_ready_broker_is_tried_again(
    monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    calls, alter = _failing([error, error])
    monkeypatch.setattr(tls, "_alter_broker_configs", alter)
    await tls.alter_with_retries(KAFKA, {"k": "v"})
    assert len(calls) == 3


async def test_an_error_that_retrying_cannot_fix_is_raised_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls, alter = _failing([ClusterAuthorizationFailedError("no")])
    monkeypatch.setattr(tls, "_alter_broker_configs", alter)
    with pytest.raises(ClusterAuthorizationFailedError):
        await tls.alter_with_retries(KAFKA, {"k": "v"})
    assert len(calls) == 1


async def test_giving_up_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    calls, alter = _failing([NodeNotReadyError("node 1")] * 3)
    monkeypatch.setattr(tls, "_alter_broker_configs", alter)
    with pytest.raises(BrokerError, match="could not reach the broker"):
        await tls.alter_with_retries(KAFKA, {"k": "v"}, attempts=3)
    assert len(calls) == 3


async def test_the_backoff_grows_to_two_seconds_and_twelve_tries_are_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls, alter = _failing([NodeNotReadyError("node 1")] * 12)
    monkeypatch.setattr(tls, "_alter_broker_configs", alter)
    waited: list[float] = []

    async def sleep(seconds: float) -> None:
        waited.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    with pytest.raises(BrokerError, match="could not reach the broker"):
        await tls.alter_with_retries(KAFKA, {"k": "v"})
    assert len(calls) == 12
    assert waited == [0.5, 1.0, 1.5] + [2.0] * 8
