"""Kafka client quotas on the broker: describe, and apply or check the policy of
:mod:`edgestream.topics.quotas`.

aiokafka 0.14 has neither DescribeClientQuotas (API 48) nor AlterClientQuotas (API 49), so both are
defined here from its protocol types, at version 0: Kafka 4 accepts 0 and 1, and 1 differs only in the
flexible encoding. The broker forwards AlterClientQuotas to the KRaft controller and answers once the
change is committed; it applies the change from its metadata a moment later, so `apply_quotas` returns
only once DescribeClientQuotas shows it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final

from aiokafka.errors import (
    IncompatibleBrokerVersion,
    for_code,
)
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Float64, Int8, Int16, Int32, Schema, String

from edgestream.topics.admin import DEFAULT_TIMEOUT_MS, admin_session
from edgestream.topics.errors import TopicAdminError
from edgestream.topics.quotas import (
    USER,
    DeviceQuotas,
    QuotaChange,
    QuotaEntity,
    QuotaKey,
    Values,
    compare,
    policy,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence

    from aiokafka.admin import AIOKafkaAdminClient

    from edgestream.pipeline.settings import KafkaSettings, Region

log = logging.getLogger(__name__)

_CLIENT_ID: Final = "edgestream-quotas"
_FIRST_BACKOFF_S: Final = 0.02
_MAX_BACKOFF_S: Final = 0.5
_CLUSTER_AUTHORIZATION_FAILED: Final = 31
_MATCH_SPECIFIED: Final = 2
"""DescribeClientQuotas' match type for "any entity with a name of this type" (0 is one name, 1 the
default entity)."""


class QuotaAdminError(TopicAdminError):
    """The broker refused or failed a client quota request."""

    reason = "quota_admin"


class QuotaPermissionDenied(QuotaAdminError):
    """The client's principal may not describe or alter client quotas."""

    def __init__(self, operation: str) -> None:
        super().__init__(
            operation,
            "this client's principal is not allowed to (CLUSTER_AUTHORIZATION_FAILED): quotas need "
            "ALTER_CONFIGS on the cluster (DESCRIBE_CONFIGS to list them) or a super user such as User:admin",
        )


def _raise_for(code: int, message: str | None, operation: str) -> None:
    if code == 0:
        return
    if code == _CLUSTER_AUTHORIZATION_FAILED:
        raise QuotaPermissionDenied(operation)
    raise QuotaAdminError(operation, f"{for_code(code).__name__} ({code}){': ' + message if message else ''}")


# -- the requests (version 0) --------------------------------------------------------------------------

_ENTITY: Final = Array(("entity_type", String("utf-8")), ("entity_name", String("utf-8")))
"""An entity: its (type, name) components; a null name is the type's default entity."""


class _DescribeClientQuotasResponse_v0(Response):  # type: ignore[misc]  # aiokafka is untyped
    API_KEY = 48
    API_VERSION = 0
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        ("error_message", String("utf-8")),
        (
            "entries",
            Array(("entity", _ENTITY), ("values", Array(("key", String("utf-8")), ("value", Float64)))),
        ),
    )


class _DescribeClientQuotasRequest_v0(RequestStruct):  # type: ignore[misc]
    API_KEY = 48
    API_VERSION = 0
    RESPONSE_TYPE = _DescribeClientQuotasResponse_v0
    SCHEMA = Schema(
        (
            "components",
            Array(("entity_type", String("utf-8")), ("match_type", Int8), ("match", String("utf-8"))),
        ),
        ("strict", Boolean),
    )


class _AlterClientQuotasResponse_v0(Response):  # type: ignore[misc]
    API_KEY = 49
    API_VERSION = 0
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("entries", Array(("error_code", Int16), ("error_message", String("utf-8")), ("entity", _ENTITY))),
    )


class _AlterClientQuotasRequest_v0(RequestStruct):  # type: ignore[misc]
    API_KEY = 49
    API_VERSION = 0
    RESPONSE_TYPE = _AlterClientQuotasResponse_v0
    SCHEMA = Schema(
        (
            "entries",
            Array(
                ("entity", _ENTITY),
                ("ops", Array(("key", String("utf-8")), ("value", Float64), ("remove", Boolean))),
            ),
        ),
        ("validate_only", Boolean),
    )


class _DescribeUsers(Request[_DescribeClientQuotasRequest_v0]):  # type: ignore[misc]
    """DescribeClientQuotas of every entity that is a user alone (no client id)."""

    API_KEY: ClassVar[int] = 48

    def build(self, request_struct_class: type[_DescribeClientQuotasRequest_v0]) -> Any:
        return request_struct_class([(USER, _MATCH_SPECIFIED, None)], True)


_Op = tuple[str, float, bool]
"""(key, value, remove), in wire order."""


class _Alter(Request[_AlterClientQuotasRequest_v0]):  # type: ignore[misc]
    """AlterClientQuotas of user entities."""

    API_KEY: ClassVar[int] = 49

    def __init__(self, entries: Sequence[tuple[QuotaEntity, Sequence[_Op]]], validate_only: bool) -> None:
        self._entries = [([(USER, entity.user)], list(ops)) for entity, ops in entries]
        self._validate_only = validate_only

    def build(self, request_struct_class: type[_AlterClientQuotasRequest_v0]) -> Any:
        return request_struct_class(self._entries, self._validate_only)


@dataclass(frozen=True, slots=True)
class _Client:
    admin: AIOKafkaAdminClient

    async def send(self, request: Request, operation: str) -> Any:
        """Send to any broker (it forwards changes to the controller); the response struct (its fields
        by name; not ``to_object``, which fails on the null ``entries`` of a refused describe)."""
        try:
            return await self.admin._send_request(request)
        except (IncompatibleBrokerVersion, NotImplementedError) as e:
            raise QuotaAdminError(
                operation, f"the broker does not accept version 0 of the quota requests: {e}"
            ) from e


@asynccontextmanager
async def _quota_client(
    kafka: KafkaSettings, timeout_ms: int, client_kwargs: Mapping[str, Any] | None
) -> AsyncIterator[_Client]:
    """A started admin client (`admin.admin_session`), closed on the way out."""
    async with admin_session(
        kafka,
        _CLIENT_ID,
        timeout_ms,
        client_kwargs=client_kwargs,
        error=QuotaAdminError,
        operation="quota request",
    ) as admin:
        yield _Client(admin)


def _parse_entry(
    components: Sequence[tuple[str, str | None]], values: Sequence[tuple[str, float]]
) -> tuple[QuotaEntity, Values] | None:
    """A user entity's managed values; None for any other entity."""
    if len(components) != 1 or components[0][0] != USER or components[0][1] is None:
        return None
    known = {key.value: key for key in QuotaKey}
    return QuotaEntity(components[0][1]), {known[key]: float(value) for key, value in values if key in known}


async def _describe(client: _Client) -> dict[QuotaEntity, Values]:
    operation = "describe client quotas"
    answer = await client.send(_DescribeUsers(), operation)
    _raise_for(answer.error_code, answer.error_message, operation)
    found: dict[QuotaEntity, Values] = {}
    for components, values in answer.entries or []:
        parsed = _parse_entry(components, values)
        if parsed is not None and parsed[1]:
            found[parsed[0]] = parsed[1]
    return found


def _ops(changes: Sequence[QuotaChange]) -> list[tuple[QuotaEntity, list[_Op]]]:
    by_entity: dict[QuotaEntity, list[_Op]] = {}
    for change in changes:
        op = (change.key.value, change.wanted or 0.0, change.wanted is None)
        by_entity.setdefault(change.entity, []).append(op)
    return sorted(by_entity.items())


async def _alter(client: _Client, changes: Sequence[QuotaChange], *, validate_only: bool = False) -> None:
    if not changes:
        return
    operation = "alter client quotas"
    answer = await client.send(_Alter(_ops(changes), validate_only), operation)
    failures: list[str] = []
    for code, message, components in answer.entries:
        if code == _CLUSTER_AUTHORIZATION_FAILED:
            raise QuotaPermissionDenied(operation)
        if code != 0:
            names = ",".join(f"{kind}={name}" for kind, name in components)
            failures.append(f"{names}: {for_code(code).__name__} {message or ''}".strip())
    if failures:
        raise QuotaAdminError(operation, "; ".join(failures))
    if not validate_only:
        log.info("altered %d client quota value(s)", len(changes))


async def _await_applied(client: _Client, wanted: Mapping[QuotaEntity, Values], timeout_ms: int) -> None:
    """Wait until DescribeClientQuotas shows the wanted values of every managed entity."""
    deadline = time.monotonic() + timeout_ms / 1000
    delay_s = _FIRST_BACKOFF_S
    while True:
        pending = compare(wanted, await _describe(client))
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise QuotaAdminError(
                "apply client quotas",
                f"{len(pending)} change(s) not visible within {timeout_ms} ms: {pending[0]}",
            )
        await asyncio.sleep(max(0.0, min(delay_s, deadline - time.monotonic())))
        delay_s = min(delay_s * 2, _MAX_BACKOFF_S)


# -- the public calls ---------------------------------------------------------------------------------


async def describe_quotas(
    kafka: KafkaSettings,
    *,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
    client_kwargs: Mapping[str, Any] | None = None,
) -> dict[QuotaEntity, Values]:
    """Every user entity's quota values on the broker (only the keys edgestream manages; an entity
    without any is left out)."""
    async with _quota_client(kafka, timeout_ms, client_kwargs) as client:
        return await _describe(client)


async def check_quotas(
    kafka: KafkaSettings,
    regions: Sequence[Region | str],
    quotas: DeviceQuotas | None = None,
    *,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
    client_kwargs: Mapping[str, Any] | None = None,
) -> tuple[dict[QuotaEntity, Values], list[QuotaChange]]:
    """The broker's user quotas and how the managed ones differ from the regions' policy (``quotas``,
    else `DeviceQuotas` from the environment)."""
    wanted = policy(regions, quotas if quotas is not None else DeviceQuotas())
    actual = await describe_quotas(kafka, timeout_ms=timeout_ms, client_kwargs=client_kwargs)
    return actual, compare(wanted, actual)


async def apply_quotas(
    kafka: KafkaSettings,
    regions: Sequence[Region | str],
    quotas: DeviceQuotas | None = None,
    *,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
    client_kwargs: Mapping[str, Any] | None = None,
) -> list[QuotaChange]:
    """Give each region's device principal exactly the policy's quotas (``quotas``, else `DeviceQuotas`
    from the environment): keys that differ are set, keys the policy leaves unset are removed, in one
    request. Returns the changes once the broker shows them; no other entity is touched."""
    wanted = policy(regions, quotas if quotas is not None else DeviceQuotas())
    async with _quota_client(kafka, timeout_ms, client_kwargs) as client:
        changes = compare(wanted, await _describe(client))
        await _alter(client, changes)
        await _await_applied(client, wanted, timeout_ms)
    return changes
