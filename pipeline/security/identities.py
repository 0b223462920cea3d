"""Who is who: the principals edgestream authorizes and the identities its certificates speak for.

A principal is what the broker's ACLs name: ``broker``, ``admin``, ``aggregator``, ``edge-<region>``
(every edge worker of a region), ``device-<region>`` (a region's devices and device gateway) and
``gateway-<region>`` (a region's device gateway: it produces what devices send and routes their
replies), ``backend-<region>`` (the backend services that read a region's results and write labels); Kafka
spells it ``User:<principal>``. An identity is a principal and the holder's own name: a certificate
carries them as its OU and CN (``pipeline/security/certificates.py``), so each node keeps a certificate
of its own while sharing its principal's ACLs. This module is the only place those names are spelled;
the PKI and the ACL policy (``topics/acls.py``) both take them from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

BROKER_PRINCIPAL: Final = "broker"
"""The broker: it serves TLS and is its own inter-broker client; a super user."""
ADMIN_PRINCIPAL: Final = "admin"
"""Operators and the tools that create topics and ACLs; a super user."""
AGGREGATOR_PRINCIPAL: Final = "aggregator"
"""The cloud aggregator."""
EDGE_NODE: Final = "worker"
"""The name of an edge node when none is given."""
DEVICE_NODE: Final = "gateway"
"""The name of a device when none is given: the region's device gateway."""
GATEWAY_NODE: Final = "gateway"
"""The name of a gateway process's Kafka client when none is given."""
GATEWAY_SERVER_NODE: Final = "wss"
"""The name of a gateway's WebSocket server certificate (it serves TLS to devices)."""
REGISTRY_PRINCIPAL: Final = "registry"
"""The registry's artifact server (``edgestream registry serve``): it serves TLS, not a Kafka client."""
BACKEND_NODE: Final = "subscriber"
"""The name of a backend service when none is given."""
MAX_NAME_CHARS: Final = 64
"""Upper bound of a principal or name (the X.520 bound of CN and OU)."""

_EDGE_PREFIX: Final = "edge-"
_DEVICE_PREFIX: Final = "device-"
_BACKEND_PREFIX: Final = "backend-"
_GATEWAY_PREFIX: Final = "gateway-"
_KAFKA_USER: Final = "User:"
_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9-]*")


def edge_principal(region: str) -> str:
    """``edge-<region>``: the principal every edge worker of ``region`` shares. Checks nothing."""
    return f"{_EDGE_PREFIX}{region}"


def device_principal(region: str) -> str:
    """``device-<region>``: the principal of ``region``'s devices and device gateway. Checks nothing."""
    return f"{_DEVICE_PREFIX}{region}"


def gateway_principal(region: str) -> str:
    """``gateway-<region>``: the principal of ``region``'s device gateways. Checks nothing."""
    return f"{_GATEWAY_PREFIX}{region}"


def serves_tls(principal: str) -> bool:
    """Whether certificates of ``principal`` also serve TLS (the broker, a gateway to devices, the
    registry's artifact server)."""
    return principal in (BROKER_PRINCIPAL, REGISTRY_PRINCIPAL) or principal.startswith(_GATEWAY_PREFIX)


def fetches_artifacts(principal: str) -> bool:
    """Whether ``principal`` may fetch model artifacts from the registry's server: edge workers (they
    serve the models), gateways (they hand artifacts to devices) and ``admin``."""
    return principal == ADMIN_PRINCIPAL or principal.startswith((_EDGE_PREFIX, _GATEWAY_PREFIX))


def backend_principal(region: str) -> str:
    """``backend-<region>``: the principal of the backend services of ``region``. Checks nothing."""
    return f"{_BACKEND_PREFIX}{region}"


def kafka_principal(principal: str) -> str:
    """``User:<principal>``: how the broker's ACLs and ``super.users`` spell a principal."""
    return f"{_KAFKA_USER}{principal}"


SUPER_USERS: Final = (kafka_principal(BROKER_PRINCIPAL), kafka_principal(ADMIN_PRINCIPAL))
"""Principals the broker's ``super.users`` must list; they need no ACL bindings."""


def _check_name(what: str, value: str) -> None:
    if not (isinstance(value, str) and _NAME_RE.fullmatch(value) and len(value) <= MAX_NAME_CHARS):
        raise ValueError(
            f"{what} {value!r} must be 1..{MAX_NAME_CHARS} characters of a-z, 0-9 and '-', "
            "starting with a letter or digit"
        )


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a certificate speaks for: the Kafka principal (OU) and the node or device name (CN)."""

    principal: str
    """Kafka principal the broker maps the certificate to, e.g. ``edge-eu-west``."""
    name: str
    """The holder's own name (CN), e.g. the edge node or device gateway."""

    def __post_init__(self) -> None:
        _check_name("principal", self.principal)
        _check_name("name", self.name)

    def __str__(self) -> str:
        return f"{self.principal}/{self.name}"

    @classmethod
    def broker(cls) -> Identity:
        """The broker (serves TLS on localhost and 127.0.0.1, and is its own inter-broker client)."""
        return cls(BROKER_PRINCIPAL, BROKER_PRINCIPAL)

    @classmethod
    def admin(cls) -> Identity:
        """Operators and tools that create topics and ACLs."""
        return cls(ADMIN_PRINCIPAL, ADMIN_PRINCIPAL)

    @classmethod
    def edge(cls, region: str, node: str = EDGE_NODE) -> Identity:
        """Edge worker ``node`` of ``region``; every node of a region shares one principal."""
        return cls(edge_principal(region), node)

    @classmethod
    def registry(cls) -> Identity:
        """The registry's artifact server (serves TLS on localhost, 127.0.0.1 and the hosts issued)."""
        return cls(REGISTRY_PRINCIPAL, REGISTRY_PRINCIPAL)

    @classmethod
    def aggregator(cls) -> Identity:
        """The cloud aggregator."""
        return cls(AGGREGATOR_PRINCIPAL, AGGREGATOR_PRINCIPAL)

    @classmethod
    def device(cls, region: str, name: str = DEVICE_NODE) -> Identity:
        """A device, or the device gateway, of ``region``."""
        return cls(device_principal(region), name)

    @classmethod
    def gateway(cls, region: str, name: str = GATEWAY_NODE) -> Identity:
        """A device gateway of ``region`` (``wss``: its WebSocket server certificate)."""
        return cls(gateway_principal(region), name)

    @classmethod
    def backend(cls, region: str, name: str = BACKEND_NODE) -> Identity:
        """A backend service of ``region``: reads its results and dead letters, writes labels."""
        return cls(backend_principal(region), name)

    @classmethod
    def of(cls, principal: str, name: str | None = None) -> Identity:
        """The identity for a principal as typed on the command line; ``name`` defaults as in the
        constructors above (``worker`` for ``edge-*``, ``gateway`` for ``device-*`` and ``gateway-*``,
        ``subscriber`` for ``backend-*``, else the principal).
        """
        if name is not None:
            return cls(principal, name)
        if principal.startswith(_EDGE_PREFIX):
            return cls(principal, EDGE_NODE)
        if principal.startswith(_DEVICE_PREFIX):
            return cls(principal, DEVICE_NODE)
        if principal.startswith(_BACKEND_PREFIX):
            return cls(principal, BACKEND_NODE)
        if principal.startswith(_GATEWAY_PREFIX):
            return cls(principal, GATEWAY_NODE)
        return cls(principal, principal)
