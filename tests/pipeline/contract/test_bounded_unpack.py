"""Messages a device sends are parsed within bounds on their arrays and maps.

One byte of msgpack is an empty array or map, so a 1 MB envelope of them made about a million Python
objects before any check could refuse it (379 ms of the worker's event loop; a 2 MiB gateway frame,
sent before authentication, ~150 MiB). Each device message now says how many arrays and maps it may
hold: past that, parsing stops and the message is refused as malformed. Peak memory is the observable:
a parse that stopped early allocates little."""

from __future__ import annotations

import contextlib
import tracemalloc
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

from edgestream.pipeline.contract.codec import TensorBody, pack_body, unpack_body
from edgestream.pipeline.contract.devicereports import DeviceReport
from edgestream.pipeline.contract.envelope import decode_envelope
from edgestream.pipeline.contract.gatewayauth import BadFrame
from edgestream.pipeline.contract.gatewayframes import MAX_ACK_IDS, decode_frame, encode_frame
from edgestream.pipeline.contract.packing import TooManyContainers, unpackb_bounded
from edgestream.pipeline.errors import MalformedBody, UndecodableEnvelope, UndecodableRecord

MIB = 1 << 20


def _flat(n: int, empty: bytes) -> bytes:
    """A map {"v": 1, "x": [n empty arrays or maps]}: n + 12 bytes."""
    return b"\x82\xa1v\x01\xa1x\xdd" + n.to_bytes(4, "big") + empty * n


def _nested(depth: int, fanout: int) -> bytes:
    """{"v": 1, "x": a tree of arrays, ``fanout`` each, ``depth`` deep}: every array short, many of them."""
    leaf = b"\x90"
    for _ in range(depth):
        leaf = bytes([0x90 | fanout]) + leaf * fanout
    return b"\x82\xa1v\x01\xa1x" + leaf


def _peak(parse: Callable[[], Any]) -> int:
    """Peak bytes Python allocated while ``parse`` ran (it is expected to raise)."""
    tracemalloc.start()
    with contextlib.suppress(Exception):
        parse()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


@pytest.mark.parametrize("raw", [_flat(1_000_000, b"\x90"), _flat(1_000_000, b"\x80"), _nested(5, 15)])
def test_an_envelope_of_empty_containers_is_refused_before_it_is_built(raw: bytes) -> None:
    assert len(raw) < 1_032_192
    with pytest.raises(UndecodableEnvelope, match="not a msgpack value"):
        decode_envelope(raw, max_envelope_bytes=1_032_192)
    assert _peak(lambda: decode_envelope(raw, max_envelope_bytes=1_032_192)) < MIB
    assert _peak(lambda: msgpack.unpackb(raw)) > 16 * MIB, "what parsing it whole costs"


def test_a_body_with_nested_containers_is_malformed_and_a_real_one_reads() -> None:
    body = TensorBody(data=b"\x00" * 16, dtype="float32", shape=(2, 2), attrs={"a": 1, "b": "x"})
    assert unpack_body(pack_body(body)) == body
    bomb = msgpack.packb({"dt": "float32", "sh": [[[]] * 60] * 60, "d": b""})  # 3,661 arrays
    with pytest.raises(MalformedBody, match="not valid msgpack"):
        unpack_body(bomb)


def test_a_gateway_frame_of_empty_containers_is_a_bad_frame_and_an_ack_of_1024_ids_is_not() -> None:
    bomb = b"\x82\xa1t\xa4auth\xa1x\xdd" + (2 * MIB - 100).to_bytes(4, "big") + b"\x80" * (2 * MIB - 100)
    with pytest.raises(BadFrame):
        decode_frame(bomb)
    assert _peak(lambda: decode_frame(bomb)) < MIB
    ids = [bytes(16)] * MAX_ACK_IDS
    assert decode_frame(encode_frame("ack", ids=ids))["ids"] == ids
    with pytest.raises(BadFrame):
        decode_frame(encode_frame("ack", ids=[*ids, bytes(16)]))


def test_a_device_report_of_nested_containers_is_undecodable() -> None:
    bomb = _nested(4, 15)
    assert len(bomb) < 64 * 1024
    with pytest.raises(UndecodableRecord):
        DeviceReport.from_bytes(bomb)


def test_the_bounds_count_every_array_and_map_and_stop_at_the_first_past_them() -> None:
    assert unpackb_bounded(
        msgpack.packb({"a": [1, 2], "b": {}}), containers=3, max_array_len=2, max_map_len=2
    )
    with pytest.raises(TooManyContainers):
        unpackb_bounded(msgpack.packb({"a": [1, 2], "b": {}}), containers=2, max_array_len=2, max_map_len=2)
    with pytest.raises(ValueError, match="max_array_len"):
        unpackb_bounded(msgpack.packb([1, 2, 3]), containers=9, max_array_len=2, max_map_len=2)
