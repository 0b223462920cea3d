"""Device ids in normal form (contract section 3): NFC without control characters is admitted, anything
else is refused as ``bad_device_id`` before a key is derived; senders and enrolment refuse it too.

The oracle here is written from Unicode's definitions (``unicodedata.normalize`` and the category
``Cc``), not from the module's own fast path, so the two are checked against each other."""

from __future__ import annotations

import unicodedata
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from edgestream.pipeline.contract.codec import encode_tensor
from edgestream.pipeline.contract.deviceid import check_device_id, device_id_problem, normal_device_id
from edgestream.pipeline.contract.envelope import MAX_DEVICE_ID_BYTES, decode_envelope, seal
from edgestream.pipeline.errors import BadDeviceId, ConfigError, ContractError, UndecodableEnvelope
from edgestream.pipeline.security.keyring import KeyRing

KEY = bytes(range(32))
REGION = "eu-west"

DECOMPOSED = "cam-u\u0308-7"
"""``cam-ü-7`` (vector 2's device) with ``ü`` decomposed: canonically equal, other bytes, not NFC."""


def _oracle_ok(device_id: str) -> bool:
    """Normal form by Unicode's definitions: NFC, and no character of category Cc."""
    return unicodedata.normalize("NFC", device_id) == device_id and not any(
        unicodedata.category(c) == "Cc" for c in device_id
    )


def _envelope_with(device_id: str) -> bytes:
    """A well-formed envelope whose ``dev`` is ``device_id`` (sealed for another id: decoding comes
    before authentication, so only the device id's form decides)."""
    fields: dict[str, Any] = msgpack.unpackb(_seal("dev-1"))
    fields["dev"] = device_id
    return msgpack.packb(fields)


def _seal(device_id: str) -> bytes:
    body = encode_tensor(np.zeros(4), "float16")
    return seal(body, device_key=KEY, device_id=device_id, key_id=1, kind="embedding", model="m")


_encodable_ids = st.text(min_size=1, max_size=40).filter(
    lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s) and len(s.encode()) <= MAX_DEVICE_ID_BYTES
)
"""Any device id that passes the length and UTF-8 checks: whatever decides it next is its form."""


@settings(max_examples=500)
@example(DECOMPOSED)
@example("cam-\u00fc-7")
@example("sensor\x00-1")
@example("sensor-1\x7f")
@example("tab\there")
@example("c1-\x85-control")
@example("\u212b")  # ANGSTROM SIGN: NFC turns it into U+00C5
@example("\u00c5")
@example("e\x00\u0301")  # removing the control leaves e + combining acute: normal_device_id must compose
@given(device_id=_encodable_ids)
def test_an_id_is_admitted_exactly_when_it_is_nfc_without_control_characters(device_id: str) -> None:
    raw = _envelope_with(device_id)
    if _oracle_ok(device_id):
        assert device_id_problem(device_id) is None
        assert decode_envelope(raw, max_envelope_bytes=1 << 20).device_id == device_id
        return
    with pytest.raises(BadDeviceId) as info:
        decode_envelope(raw, max_envelope_bytes=1 << 20)
    assert (info.value.reason, info.value.stage) == ("bad_device_id", "decode")
    assert device_id not in str(info.value)  # the message never quotes the id
    with pytest.raises(ValueError, match="device_id"):
        _seal(device_id)  # a sender refuses it before sealing


@given(device_id=st.text(alphabet=st.characters(max_codepoint=0x7F), min_size=1, max_size=40))
def test_the_ascii_fast_path_agrees_with_unicode(device_id: str) -> None:
    assert (device_id_problem(device_id) is None) == _oracle_ok(device_id)


@settings(max_examples=300)
@given(name=_encodable_ids)
def test_normal_device_id_gives_an_id_in_normal_form_and_keeps_normal_ones(name: str) -> None:
    normal = normal_device_id(name)
    assert _oracle_ok(normal)
    assert normal_device_id(normal) == normal
    if _oracle_ok(name):
        assert normal == name


def test_two_spellings_of_one_name_are_not_two_devices() -> None:
    assert normal_device_id(DECOMPOSED) == "cam-\u00fc-7"
    with pytest.raises(BadDeviceId, match="NFC"):
        decode_envelope(_envelope_with(DECOMPOSED), max_envelope_bytes=1 << 20)
    with pytest.raises(BadDeviceId, match="control character"):
        check_device_id("line\nbreak")


def test_type_and_length_errors_still_come_first() -> None:
    fields: dict[str, Any] = msgpack.unpackb(_seal("dev-1"))
    fields["dev"] = "\x00" * 129  # too long *and* a control character: undecodable, as before
    with pytest.raises(UndecodableEnvelope):
        decode_envelope(msgpack.packb(fields), max_envelope_bytes=1 << 20)
    fields["dev"], fields["ts"] = "bad\x00id", -1  # a malformed field: undecodable wins too
    with pytest.raises(UndecodableEnvelope):
        decode_envelope(msgpack.packb(fields), max_envelope_bytes=1 << 20)
    assert issubclass(BadDeviceId, ContractError)  # dead-lettered, never stops a worker


def test_enrolment_refuses_an_id_not_in_normal_form_and_names_the_one_to_use() -> None:
    ring = KeyRing({REGION: {1: bytes(32)}})
    with pytest.raises(ConfigError, match="enrol it as 'cam-\u00fc-7'"):
        ring.enrolled(REGION, [DECOMPOSED], now_ms=1)
    with pytest.raises(ConfigError, match="control character"):
        ring.enrolled(REGION, ["dev\x1b[31m"], now_ms=1)
    assert "cam-\u00fc-7" in ring.enrolled(REGION, ["cam-\u00fc-7"], now_ms=1).devices(REGION)
