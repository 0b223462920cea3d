"""Identities: the principal and name of each, the defaults of the constructors, and the names refused."""

from __future__ import annotations

import pytest

from edgestream.pipeline.security.identities import Identity


@pytest.mark.parametrize(
    ("identity", "principal", "name"),
    [
        (Identity.broker(), "broker", "broker"),
        (Identity.admin(), "admin", "admin"),
        (Identity.edge("eu-west"), "edge-eu-west", "worker"),
        (Identity.edge("ap-south", "node-7"), "edge-ap-south", "node-7"),
        (Identity.aggregator(), "aggregator", "aggregator"),
        (Identity.device("us-east"), "device-us-east", "gateway"),
        (Identity.device("us-east", "sensor-0042"), "device-us-east", "sensor-0042"),
        (Identity.of("edge-eu-west"), "edge-eu-west", "worker"),
        (Identity.of("device-eu-west"), "device-eu-west", "gateway"),
        (Identity.backend("eu-west"), "backend-eu-west", "subscriber"),
        (Identity.backend("eu-west", "fraud-ops"), "backend-eu-west", "fraud-ops"),
        (Identity.of("backend-eu-west"), "backend-eu-west", "subscriber"),
        (Identity.of("admin"), "admin", "admin"),
        (Identity.of("edge-eu-west", "n1"), "edge-eu-west", "n1"),
    ],
)
def test_identity_constructors(identity: Identity, principal: str, name: str) -> None:
    assert (identity.principal, identity.name) == (principal, name)


@pytest.mark.parametrize(
    ("principal", "name"),
    [
        ("Edge-eu-west", "worker"),
        ("edge-eu-west", "a,b"),
        ("edge-eu-west", "a+b"),
        ("edge-eu-west", ""),
        ("", "worker"),
        ("-edge", "worker"),
        ("edge eu", "worker"),
        ("edge-eu-west", "x" * 65),
        ("edge-eu-west", "wörker"),
    ],
)
def test_identity_rejects_names_the_mapping_rule_cannot_carry(principal: str, name: str) -> None:
    with pytest.raises(ValueError, match=r"must be 1\.\.64 characters"):
        Identity(principal, name)


def test_region_is_validated_through_the_principal() -> None:
    with pytest.raises(ValueError, match="principal 'edge-EU'"):
        Identity.edge("EU")
