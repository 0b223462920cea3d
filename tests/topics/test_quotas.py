"""The device quota policy (pure): what it sets for each region, and how the broker's values differ."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edgestream.topics.errors import InvalidRegionName
from edgestream.topics.quotas import (
    DeviceQuotas,
    QuotaEntity,
    QuotaKey,
    compare,
    device_entity,
    entities,
    policy,
)

PRODUCE = QuotaKey.PRODUCER_BYTE_RATE
FETCH = QuotaKey.CONSUMER_BYTE_RATE
REQUESTS = QuotaKey.REQUEST_PERCENTAGE


def test_each_region_gets_its_device_principal_quota() -> None:
    quotas = DeviceQuotas(producer_byte_rate=1000, consumer_byte_rate=2000, request_percentage=25)
    wanted = policy(["eu", "us", "eu"], quotas)
    assert wanted == {
        QuotaEntity("device-eu"): {PRODUCE: 1000.0, FETCH: 2000.0, REQUESTS: 25.0},
        QuotaEntity("device-us"): {PRODUCE: 1000.0, FETCH: 2000.0, REQUESTS: 25.0},
    }
    assert entities(["us", "eu"]) == [QuotaEntity("device-eu"), QuotaEntity("device-us")]
    assert str(device_entity("eu")) == "user=device-eu"


def test_a_kind_set_to_none_is_not_in_the_policy() -> None:
    quotas = DeviceQuotas(producer_byte_rate=1000, consumer_byte_rate=None, request_percentage=None)
    assert policy(["eu"], quotas) == {QuotaEntity("device-eu"): {PRODUCE: 1000.0}}
    assert policy(["eu"], DeviceQuotas.none()) == {QuotaEntity("device-eu"): {}}


def test_quotas_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGESTREAM_DEVICE_QUOTA_PRODUCER_BYTE_RATE", "4096")
    monkeypatch.setenv("EDGESTREAM_DEVICE_QUOTA_REQUEST_PERCENTAGE", "none")
    quotas = DeviceQuotas()
    assert quotas.producer_byte_rate == 4096
    assert quotas.request_percentage is None
    assert quotas.consumer_byte_rate == DeviceQuotas.model_fields["consumer_byte_rate"].default


@pytest.mark.parametrize("field", ["producer_byte_rate", "consumer_byte_rate", "request_percentage"])
@pytest.mark.parametrize("value", [0, -1])
def test_a_quota_must_be_positive(field: str, value: float) -> None:
    with pytest.raises(ValidationError):
        DeviceQuotas.model_validate({field: value})


@pytest.mark.parametrize("value", [1000.5, 2**31])
def test_a_byte_rate_is_whole_and_fits_strimzis_field(value: float) -> None:
    """Kafka refuses a fractional byte rate (INVALID_REQUEST, mid-apply); Strimzi's field is 32-bit."""
    for field in ("producer_byte_rate", "consumer_byte_rate"):
        with pytest.raises(ValidationError):
            DeviceQuotas.model_validate({field: value})
    assert DeviceQuotas(request_percentage=12.5).request_percentage == 12.5


def test_a_bad_region_name_is_refused() -> None:
    with pytest.raises(InvalidRegionName):
        policy(["EU!"], DeviceQuotas())


def test_compare_names_each_key_that_differs_on_a_managed_entity() -> None:
    wanted = {QuotaEntity("device-eu"): {PRODUCE: 1000.0, REQUESTS: 25.0}, QuotaEntity("device-us"): {}}
    actual = {
        QuotaEntity("device-eu"): {PRODUCE: 1000.0, FETCH: 5.0},  # fetch extra, requests missing
        QuotaEntity("device-us"): {PRODUCE: 7.0},  # all to be removed
        QuotaEntity("backend-eu"): {PRODUCE: 1.0},  # not managed: left alone
    }
    changes = compare(wanted, actual)
    assert [(c.entity.user, c.key, c.actual, c.wanted) for c in changes] == [
        ("device-eu", FETCH, 5.0, None),
        ("device-eu", REQUESTS, None, 25.0),
        ("device-us", PRODUCE, 7.0, None),
    ]
    assert str(changes[0]) == "user=device-eu consumer_byte_rate: 5 B/s -> unset"
    assert str(changes[1]) == "user=device-eu request_percentage: unset -> 25%"
    assert (
        str(compare({QuotaEntity("d"): {PRODUCE: 16 * 2**20}}, {})[0])
        == "user=d producer_byte_rate: unset -> 16 MiB/s"
    )
    assert compare(wanted, {QuotaEntity("device-eu"): {PRODUCE: 1000.0, REQUESTS: 25.0}}) == []
