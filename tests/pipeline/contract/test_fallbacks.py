"""Fallback reports: the header a device sets, read back; anything malformed reads as no report."""

from __future__ import annotations

import pytest

from edgestream.pipeline.contract.fallbacks import FALLBACKS_HEADER, fallbacks_header, reported_fallbacks


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
