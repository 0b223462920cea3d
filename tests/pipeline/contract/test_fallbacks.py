"""Fallback reports: the header a device sets, read back; anything malformed reads as no report."""

from __future__ import annotations

import pytest

from edgestream.pipeline.contract.fallbacks import (
    FALLBACKS_HEADER,
    MAX_DIGITS,
    FallbackReports,
    fallbacks_header,
    reported_fallbacks,
)


def test_a_report_reads_back() -> None:
    assert fallbacks_header(3) == (FALLBACKS_HEADER, b"3")
    assert reported_fallbacks([("traceparent", b"00-abc"), fallbacks_header(12)]) == 12
    assert reported_fallbacks([]) == 0


@pytest.mark.parametrize("value", [b"", b"-3", b"+3", b"3.0", b" 3", b"1234567", b"\xd9\xa3", b"0x10"])
def test_a_malformed_report_counts_nothing(value: bytes) -> None:
    assert reported_fallbacks([(FALLBACKS_HEADER, value)]) == 0


def test_only_the_first_report_counts() -> None:
    assert reported_fallbacks([(FALLBACKS_HEADER, b"2"), (FALLBACKS_HEADER, b"900")]) == 2


@pytest.mark.parametrize("count", [0, -1, 10**6])
def test_a_device_cannot_write_a_report_the_edge_would_not_read(count: int) -> None:
    with pytest.raises(ValueError, match="fallback report"):
        fallbacks_header(count)


def test_a_device_reports_its_fallbacks_once_on_its_next_request_of_that_model() -> None:
    reports = FallbackReports()
    assert reports.header("d1", "m") is None
    reports.fell_back("d1", "m")
    reports.fell_back("d1", "m")
    reports.fell_back("d1", "other")
    reports.fell_back("d2", "m")
    header = reports.header("d1", "m")
    assert header is not None
    assert reported_fallbacks([header]) == 2
    assert reports.header("d1", "m") is None, "reported once"
    other = reports.header("d1", "other")
    assert other is not None
    assert reported_fallbacks([other]) == 1
    d2 = reports.header("d2", "m")
    assert d2 is not None
    assert reported_fallbacks([d2]) == 1


def test_a_count_past_what_the_header_holds_is_reported_in_parts() -> None:
    reports = FallbackReports()
    most = 10**MAX_DIGITS - 1
    for _ in range(most + 5):
        reports.fell_back("d", "m")
    first, second = reports.header("d", "m"), reports.header("d", "m")
    assert first is not None
    assert second is not None
    assert (reported_fallbacks([first]), reported_fallbacks([second])) == (most, 5)
    assert reports.header("d", "m") is None
