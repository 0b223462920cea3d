"""Committed offsets that are *stable*: OffsetFetch v7 with ``require_stable`` (KIP-447).

aiokafka 0.14's ``committed()`` sends OffsetFetch v1-v3 and reads only the per-partition error codes.
Two answers it gets wrong matter to an exactly-once worker, and both show up right after a broker
restart:

- While the group coordinator is still loading ``__consumer_offsets``, v2+ puts
  ``COORDINATOR_LOAD_IN_PROGRESS`` in the *top-level* error code with no partitions; aiokafka ignores
  it and reports "no committed offset", and a consumer then starts from the beginning.
- A transactional offset commit whose transaction markers are not written yet is invisible: the
  broker answers with the previous, stable offset, and the records between the two are read again.

With ``require_stable`` the broker answers ``UNSTABLE_OFFSET_COMMIT`` for such a partition instead,
and every retriable error (top-level or per partition) is retried here with a bounded backoff, so the
answer is exactly what the last committed transaction left.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any, ClassVar, NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.client import ConnectionGroup
from aiokafka.errors import GroupCoordinatorNotAvailableError, KafkaError, for_code
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Int64,
    Schema,
    TaggedFields,
)

log = logging.getLogger(__name__)

OFFSET_FETCH = 9
"""The OffsetFetch API key."""
NO_OFFSET = -1

# Error codes of the Kafka protocol (aiokafka has no class for 88).
NONE = 0
COORDINATOR_LOAD_IN_PROGRESS = 14
COORDINATOR_NOT_AVAILABLE = 15
NOT_COORDINATOR = 16
UNSTABLE_OFFSET_COMMIT = 88
RETRIABLE = {COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR, UNSTABLE_OFFSET_COMMIT}
"""Errors that mean "ask again"; a coordinator error also means "find the coordinator again"."""


class OffsetFetchResponse_v7(Response):  # type: ignore[misc]  # aiokafka is untyped
    API_KEY = OFFSET_FETCH
    API_VERSION = 7
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition_index", Int32),
                        ("committed_offset", Int64),
                        ("committed_leader_epoch", Int32),
                        ("metadata", CompactString("utf-8")),
                        ("error_code", Int16),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("error_code", Int16),
        ("tags", TaggedFields),
    )


class OffsetFetchRequest_v7(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = OFFSET_FETCH
    API_VERSION = 7
    RESPONSE_TYPE = OffsetFetchResponse_v7
    SCHEMA = Schema(
        ("group_id", CompactString("utf-8")),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                ("partition_indexes", CompactArray(Int32)),
                ("tags", TaggedFields),
            ),
        ),
        ("require_stable", Boolean),
        ("tags", TaggedFields),
    )


class StableOffsetFetchRequest(Request[OffsetFetchRequest_v7]):  # type: ignore[misc]
    """OffsetFetch v7 only: a broker without it (before Kafka 2.5) is refused, not half-served."""

    API_KEY: ClassVar[int] = OFFSET_FETCH

    def __init__(self, group_id: str, partitions: Iterable[TopicPartition]) -> None:
        by_topic: dict[str, list[int]] = {}
        for tp in partitions:
            by_topic.setdefault(tp.topic, []).append(tp.partition)
        self._group_id = group_id
        self._topics: list[tuple[str, list[int], dict[int, bytes]]] = [
            (topic, sorted(parts), {}) for topic, parts in sorted(by_topic.items())
        ]

    def build(self, request_struct_class: type[OffsetFetchRequest_v7]) -> OffsetFetchRequest_v7:
        return request_struct_class(self._group_id, self._topics, True, {})


class Committed(NamedTuple):
    """A partition's committed position and the metadata committed with it."""

    offset: int
    """The next offset to read."""
    metadata: str
    """The metadata string of the commit (the worker keeps its audit chain head there)."""


class UnstableOffsets(KafkaError):  # type: ignore[misc]
    """The committed offsets did not become stable in time (a transaction still in doubt)."""

    retriable = True


def parse(response: Any) -> tuple[int, dict[TopicPartition, Committed | None], dict[TopicPartition, int]]:
    """(top-level error, commits (None: none), per-partition errors) of an OffsetFetch v7 answer."""
    offsets: dict[TopicPartition, Committed | None] = {}
    errors: dict[TopicPartition, int] = {}
    for name, partitions, _tags in response.topics:
        for index, offset, _epoch, metadata, error, _ptags in partitions:
            tp = TopicPartition(name, index)
            if error != NONE:
                errors[tp] = error
            else:
                offsets[tp] = None if offset == NO_OFFSET else Committed(offset, metadata or "")
    return response.error_code, offsets, errors


async def stable_committed(
    consumer: AIOKafkaConsumer,
    partitions: Iterable[TopicPartition],
    *,
    timeout_s: float = 30.0,
    backoff_s: float = 0.05,
) -> dict[TopicPartition, Committed | None]:
    """The commit of each partition for the consumer's group, once stable (None: no commit).

    Retries coordinator moves and loads and in-doubt transactions until ``timeout_s``, then raises
    ``UnstableOffsets``; a non-retriable error is raised as aiokafka's error for its code.
    """
    wanted = set(partitions)
    if not wanted:
        return {}
    coordinator = consumer._coordinator
    group_id: str = coordinator.group_id
    deadline = time.monotonic() + timeout_s
    found: dict[TopicPartition, Committed | None] = {}
    attempt = 0
    while True:
        pending = wanted - found.keys()
        last: object = None
        try:
            await asyncio.wait_for(
                coordinator.ensure_coordinator_known(), max(0.0, deadline - time.monotonic())
            )
            node_id = coordinator.coordinator_id
            if node_id is None:
                raise GroupCoordinatorNotAvailableError()
            response = await consumer._client.send(
                node_id, StableOffsetFetchRequest(group_id, pending), group=ConnectionGroup.COORDINATION
            )
            top, offsets, errors = parse(response)
            if top in (COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR):
                coordinator.coordinator_dead()
            if top != NONE:
                if top not in RETRIABLE:
                    raise for_code(top)(f"OffsetFetch for group {group_id}")
                last = f"group error {top}"
            else:
                found.update({tp: off for tp, off in offsets.items() if tp in pending})
                fatal = {tp: e for tp, e in errors.items() if e not in RETRIABLE}
                if fatal:
                    tp, code = next(iter(fatal.items()))
                    raise for_code(code)(f"OffsetFetch for {tp.topic}[{tp.partition}]")
                missing = wanted - found.keys()
                if not missing:
                    return {tp: found[tp] for tp in wanted}
                last = {f"{tp.topic}[{tp.partition}]": errors.get(tp, "absent") for tp in sorted(missing)}
        except TimeoutError:
            last = "no group coordinator found"
        except KafkaError as err:
            if not err.retriable:
                raise
            last = repr(err)
        attempt += 1
        if time.monotonic() >= deadline:
            raise UnstableOffsets(
                f"committed offsets of group {group_id} not stable after {timeout_s} s: {last}"
            )
        if attempt in (1, 10, 100):
            log.info("committed offsets of %s not stable yet (%s); retrying", group_id, last)
        await asyncio.sleep(min(1.0, backoff_s * 2 ** min(attempt, 5)))
