"""Kafka ACLs on the broker: create, describe, delete, and apply or check the policy of
:mod:`edgestream.topics.acls`.

aiokafka 0.14's admin client has no ACL calls, so the requests are built here from its protocol types,
pinned to version 1: the baseline Kafka 4 accepts (KIP-896 removed v0), and the last version before
the flexible encodings that aiokafka's structs do not implement for these APIs. The broker forwards
CreateAcls and DeleteAcls to the KRaft controller and answers once the change is committed; its own
authorizer applies it a moment later, so every call that changes bindings returns only once
DescribeAcls shows the change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    IncompatibleBrokerVersion,
    SecurityDisabled,
    for_code,
)
from aiokafka.protocol.admin import (
    CreateAclsRequest_v1,
    DeleteAclsRequest_v1,
    DescribeAclsRequest_v1,
)
from aiokafka.protocol.api import Request

from edgestream.topics.acls import (
    WILDCARD_PRINCIPAL,
    AclDiff,
    AclRule,
    Operation,
    PatternType,
    Permission,
    ResourceType,
    compare,
    policy,
)
from edgestream.topics.admin import DEFAULT_TIMEOUT_MS, admin_session
from edgestream.topics.errors import TopicAdminError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Mapping, Sequence

    from edgestream.pipeline.settings import KafkaSettings, Region

log = logging.getLogger(__name__)

_CLIENT_ID: Final = "edgestream-acls"
_FIRST_BACKOFF_S: Final = 0.02
_MAX_BACKOFF_S: Final = 0.5
_CLUSTER_AUTHORIZATION_FAILED: Final = 31

# -- errors --------------------------------------------------------------------------------------------


class AclAdminError(TopicAdminError):
    """The broker refused or failed an ACL request."""

    reason = "acl_admin"


class AuthorizerDisabled(AclAdminError):
    """The broker runs without an authorizer, so it has no ACLs to create, describe or delete."""

    reason = "acl_security_disabled"

    def __init__(self, operation: str, bootstrap_servers: str) -> None:
        super().__init__(
            operation,
            f"the broker at {bootstrap_servers} has no authorizer (SECURITY_DISABLED), so it keeps no "
            "ACLs; set authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer "
            "(and super.users) in its server.properties and restart it",
        )
        self.bootstrap_servers = bootstrap_servers


class AclPermissionDenied(AclAdminError):
    """The client's principal may not manage ACLs (CLUSTER_AUTHORIZATION_FAILED)."""

    reason = "acl_denied"

    def __init__(self, operation: str) -> None:
        super().__init__(
            operation,
            "this client's principal is not allowed to (CLUSTER_AUTHORIZATION_FAILED): managing ACLs "
            "needs ALTER on the cluster (DESCRIBE to list them) or a super user such as User:admin",
        )


def _raise_for(code: int, message: str | None, operation: str, bootstrap_servers: str) -> None:
    if code == 0:
        return
    error = for_code(code)
    if error is SecurityDisabled:
        raise AuthorizerDisabled(operation, bootstrap_servers)
    if code == _CLUSTER_AUTHORIZATION_FAILED:
        raise AclPermissionDenied(operation)
    raise AclAdminError(operation, f"{error.__name__} ({code}){': ' + message if message else ''}")


# -- the requests (version 1) ------------------------------------------------------------------------

_Binding = tuple[int, str | None, int, str | None, str | None, int, int]
"""(resource type, name, pattern type, principal, host, operation, permission), in wire order."""


def _binding(rule: AclRule) -> _Binding:
    return (
        int(rule.resource_type),
        rule.resource_name,
        int(rule.pattern_type),
        rule.principal,
        rule.host,
        int(rule.operation),
        int(rule.permission),
    )


_EVERYTHING: Final[_Binding] = (
    int(ResourceType.ANY),
    None,
    int(PatternType.ANY),
    None,
    None,
    int(Operation.ANY),
    int(Permission.ANY),
)
"""The DescribeAcls filter that matches every binding."""


class _CreateAcls(Request[CreateAclsRequest_v1]):  # type: ignore[misc]  # aiokafka is untyped
    """CreateAcls v1 for many bindings (aiokafka's own request carries one)."""

    API_KEY: ClassVar[int] = 30

    def __init__(self, bindings: Sequence[_Binding]) -> None:
        self._bindings = list(bindings)

    def build(self, request_struct_class: type[CreateAclsRequest_v1]) -> CreateAclsRequest_v1:
        return request_struct_class(self._bindings)


class _DescribeAcls(Request[DescribeAclsRequest_v1]):  # type: ignore[misc]
    """DescribeAcls v1 with one filter (v2, flexible, is mis-encoded by aiokafka 0.14)."""

    API_KEY: ClassVar[int] = 29

    def __init__(self, binding_filter: _Binding) -> None:
        self._filter = binding_filter

    def build(self, request_struct_class: type[DescribeAclsRequest_v1]) -> DescribeAclsRequest_v1:
        return request_struct_class(*self._filter)


class _DeleteAcls(Request[DeleteAclsRequest_v1]):  # type: ignore[misc]
    """DeleteAcls v1 with many filters (aiokafka's own request carries one)."""

    API_KEY: ClassVar[int] = 31

    def __init__(self, filters: Sequence[_Binding]) -> None:
        self._filters = list(filters)

    def build(self, request_struct_class: type[DeleteAclsRequest_v1]) -> DeleteAclsRequest_v1:
        return request_struct_class(self._filters)


@dataclass(frozen=True, slots=True)
class _Client:
    """A started admin client and the address it was given (for messages)."""

    admin: AIOKafkaAdminClient
    """The aiokafka admin client."""
    bootstrap_servers: str
    """Where it connected."""

    async def send(self, request: Request, operation: str) -> dict[str, Any]:
        """Send to any broker (it forwards mutations to the controller); the response as a dict."""
        try:
            response = await self.admin._send_request(request)
        except (IncompatibleBrokerVersion, NotImplementedError) as e:
            raise AclAdminError(
                operation, f"the broker does not accept version 1 of the ACL requests: {e}"
            ) from e
        result: dict[str, Any] = response.to_object()
        return result


@asynccontextmanager
async def _acl_client(
    kafka: KafkaSettings, timeout_ms: int, client_kwargs: Mapping[str, Any] | None
) -> AsyncIterator[_Client]:
    """A started admin client (`admin.admin_session`), closed on the way out; ``client_kwargs`` win over
    those ``kafka`` gives (e.g. SASL settings, which `KafkaSettings` does not model)."""
    async with admin_session(
        kafka,
        _CLIENT_ID,
        timeout_ms,
        client_kwargs=client_kwargs,
        error=AclAdminError,
        operation="ACL request",
    ) as admin:
        yield _Client(admin, kafka.bootstrap_servers)


def _parse(resource: Mapping[str, Any], acl: Mapping[str, Any], operation: str) -> AclRule:
    try:
        return AclRule(
            principal=acl["principal"],
            resource_type=ResourceType(resource["resource_type"]),
            pattern_type=PatternType(resource["resource_pattern_type"]),
            resource_name=resource["resource_name"],
            operation=Operation(acl["operation"]),
            permission=Permission(acl["permission_type"]),
            host=acl["host"],
        )
    except ValueError as e:
        raise AclAdminError(operation, f"the broker reported a binding this version cannot read: {e}") from e


async def _describe(client: _Client) -> list[AclRule]:
    operation = "describe ACLs"
    answer = await client.send(_DescribeAcls(_EVERYTHING), operation)
    _raise_for(answer["error_code"], answer["error_message"], operation, client.bootstrap_servers)
    return sorted(
        _parse(resource, acl, operation) for resource in answer["resources"] for acl in resource["acls"]
    )


def _is_broker_wide(code: int) -> bool:
    """A per-binding code that means the whole request is refused: no authorizer, or not allowed."""
    return for_code(code) is SecurityDisabled or code == _CLUSTER_AUTHORIZATION_FAILED


async def _create(client: _Client, rules: Sequence[AclRule]) -> None:
    if not rules:
        return
    operation = "create ACLs"
    answer = await client.send(_CreateAcls([_binding(rule) for rule in rules]), operation)
    failures: list[str] = []
    for rule, result in zip(rules, answer["creation_responses"], strict=True):
        code, message = result["error_code"], result["error_message"]
        if code != 0 and _is_broker_wide(code):
            _raise_for(code, message, operation, client.bootstrap_servers)
        if code != 0:
            failures.append(f"{rule}: {for_code(code).__name__} {message or ''}".strip())
    if failures:
        raise AclAdminError(operation, "; ".join(failures))
    log.info("created %d ACL binding(s)", len(rules))


async def _delete(client: _Client, rules: Sequence[AclRule]) -> list[AclRule]:
    """Delete exactly these bindings (each filter matches one binding); returns those deleted."""
    if not rules:
        return []
    operation = "delete ACLs"
    answer = await client.send(_DeleteAcls([_binding(rule) for rule in rules]), operation)
    deleted: list[AclRule] = []
    failures: list[str] = []
    for rule, result in zip(rules, answer["filter_responses"], strict=True):
        code = result["error_code"]
        if code != 0:
            if _is_broker_wide(code):
                _raise_for(code, result["error_message"], operation, client.bootstrap_servers)
            failures.append(f"{rule}: {for_code(code).__name__} {result['error_message'] or ''}".strip())
            continue
        for match in result["matching_acls"]:
            if match["error_code"] != 0:
                failures.append(f"{rule}: {for_code(match['error_code']).__name__}")
            else:
                deleted.append(_parse(match, match, operation))
    if failures:
        raise AclAdminError(operation, "; ".join(failures))
    log.info("deleted %d ACL binding(s)", len(deleted))
    return sorted(deleted)


async def _await_applied(
    client: _Client, present: Iterable[AclRule], absent: Iterable[AclRule], timeout_ms: int
) -> None:
    """Wait until DescribeAcls shows every ``present`` binding and none of ``absent``."""
    want, gone = set(present), set(absent)
    if not want and not gone:
        return
    deadline = time.monotonic() + timeout_ms / 1000
    delay_s = _FIRST_BACKOFF_S
    while True:
        seen = set(await _describe(client))
        pending = (want - seen) | (gone & seen)
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise AclAdminError(
                "apply ACLs", f"{len(pending)} change(s) not visible within {timeout_ms} ms: {min(pending)}"
            )
        await asyncio.sleep(max(0.0, min(delay_s, deadline - time.monotonic())))
        delay_s = min(delay_s * 2, _MAX_BACKOFF_S)


# -- the public calls ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AclReport:
    """What `apply_policy` did."""

    created: list[AclRule]
    """Policy bindings the broker lacked, now created."""
    deleted: list[AclRule]
    """Bindings of managed principals outside the policy, deleted (only with ``prune``)."""
    unchanged: list[AclRule]
    """Policy bindings that were already there."""
    left: list[AclRule]
    """Bindings outside the policy still on the broker: all of them without ``prune``; with it, those
    for every principal (``User:*``), which are not edgestream's to delete."""


async def describe_acls(
    kafka: KafkaSettings,
    *,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
    client_kwargs: Mapping[str, Any] | None = None,
) -> list[AclRule]:
    """Every binding on the broker (any principal), sorted; `AuthorizerDisabled` without an authorizer."""
    async with _acl_client(kafka, timeout_ms, client_kwargs) as client:
        return await _describe(client)


async def create_acls(
    kafka: KafkaSettings,
    rules: Iterable[AclRule],
    *,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
    client_kwargs: Mapping[str, Any] | None = None,
) -> None:
    """Create the bindings in one request; returns once the broker's authorizer shows them.

    Idempotent: creating a binding the broker has already is no error, and it keeps one copy.
    """
    wanted = sorted(set(rules))
    async with _acl_client(kafka, timeout_ms, client_kwargs) as client:
        await _create(client, wanted)
        await _await_applied(client, wanted, [], timeout_ms)


async def delete_acls(
    kafka: KafkaSettings,
    rules: Iterable[AclRule],
    *,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
    client_kwargs: Mapping[str, Any] | None = None,
) -> list[AclRule]:
    """Delete exactly these bindings (no wildcard matching); returns those that existed, once the
    broker's authorizer no longer shows them."""
    doomed = sorted(set(rules))
    async with _acl_client(kafka, timeout_ms, client_kwargs) as client:
        deleted = await _delete(client, doomed)
        await _await_applied(client, [], deleted, timeout_ms)
    return deleted


async def check_policy(
    kafka: KafkaSettings,
    regions: Sequence[Region | str],
    *,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
    client_kwargs: Mapping[str, Any] | None = None,
) -> tuple[list[AclRule], AclDiff]:
    """The broker's bindings (all of them) and how they differ from the regions' policy."""
    wanted = policy(regions)
    actual = await describe_acls(kafka, timeout_ms=timeout_ms, client_kwargs=client_kwargs)
    return actual, compare(wanted, actual)


async def apply_policy(
    kafka: KafkaSettings,
    regions: Sequence[Region | str],
    prune: bool = False,
    *,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
    client_kwargs: Mapping[str, Any] | None = None,
) -> AclReport:
    """Create the policy's missing bindings; with ``prune``, delete the managed principals' others.

    Managed principals are those the policy names for these regions, less the super users (see
    `compare`); another region's principals are left alone, and so are bindings for ``User:*``.
    Returns once the broker's authorizer shows the changes.
    """
    wanted = policy(regions)
    async with _acl_client(kafka, timeout_ms, client_kwargs) as client:
        diff = compare(wanted, await _describe(client))
        await _create(client, diff.missing)
        doomed = [rule for rule in diff.extra if rule.principal != WILDCARD_PRINCIPAL] if prune else []
        deleted = await _delete(client, doomed)
        await _await_applied(client, diff.missing, deleted, timeout_ms)
    missing, gone = set(diff.missing), set(deleted)
    return AclReport(
        created=diff.missing,
        deleted=deleted,
        unchanged=[rule for rule in wanted if rule not in missing],
        left=[rule for rule in diff.extra if rule not in gone],
    )
