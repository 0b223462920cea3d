"""Gateway authentication and frames (``pipeline/contract/gatewayauth.py``, ``gatewayframes.py``): the
auth key derives from the device key alone and as documented; a signature verifies only over its own
transcript (any other certificate, nonce, region, device or key id fails); the directory round-trips
and refuses malformed files; frame decoding never raises anything but `BadFrame`, whatever the bytes."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

import msgpack
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from edgestream.pipeline.contract.gatewayauth import (
    AUTH_KEY_INFO,
    BadFrame,
    BadSignature,
    DirectoryError,
    UnknownDevice,
    auth_public_key,
    derive_auth_key,
    directory_keys,
    parse_directory,
    read_directory,
    sign_transcript,
    transcript,
    verify_transcript,
    write_directory,
)
from edgestream.pipeline.contract.gatewayframes import (
    Auth,
    auth_frame,
    decode_frame,
    encode_frame,
    parse_ack,
    parse_auth,
    parse_env,
    parse_get,
    parse_hello,
)
from edgestream.pipeline.errors import BadDeviceId

DEVICE_KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
FIELDS: dict[str, Any] = {
    "region": "eu-west",
    "cert_sha256": hashlib.sha256(b"cert").digest(),
    "server_nonce": b"s" * 32,
    "client_nonce": b"c" * 32,
    "device_id": "dev-1",
    "key_id": 7,
}


def test_the_auth_key_is_hkdf_of_the_device_key_as_documented() -> None:
    assert AUTH_KEY_INFO == b"edgestream/device-auth\x00\x01"
    seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=bytes(32), info=AUTH_KEY_INFO).derive(DEVICE_KEY)
    assert derive_auth_key(DEVICE_KEY).private_bytes_raw() == seed
    assert auth_public_key(DEVICE_KEY) != auth_public_key(OTHER_KEY)
    with pytest.raises(ValueError, match="32 bytes"):
        derive_auth_key(b"short")


def test_the_transcript_layout() -> None:
    data = transcript(**FIELDS)
    assert data.startswith(b"edgestream/gateway-auth\x00\x01\x00\x07eu-west")
    assert data.endswith(b"\x00\x05dev-1\x00\x00\x00\x07")
    assert len(data) == 23 + 2 + 2 + 7 + 32 + 32 + 32 + 2 + 5 + 4


def test_a_signature_verifies_only_over_its_own_transcript() -> None:
    key = derive_auth_key(DEVICE_KEY)
    public = Ed25519PublicKey.from_public_bytes(auth_public_key(DEVICE_KEY))
    signature = sign_transcript(key, transcript(**FIELDS))
    verify_transcript(public, signature, transcript(**FIELDS))
    changes: list[dict[str, Any]] = [
        {"region": "us-east"},
        {"cert_sha256": hashlib.sha256(b"other").digest()},
        {"server_nonce": b"S" * 32},
        {"client_nonce": b"C" * 32},
        {"device_id": "dev-2"},
        {"key_id": 8},
    ]
    for change in changes:
        with pytest.raises(BadSignature):
            verify_transcript(public, signature, transcript(**{**FIELDS, **change}))
    other = Ed25519PublicKey.from_public_bytes(auth_public_key(OTHER_KEY))
    with pytest.raises(BadSignature):
        verify_transcript(other, signature, transcript(**FIELDS))
    with pytest.raises(BadSignature):
        verify_transcript(public, signature[:10], transcript(**FIELDS))


def test_a_transcript_refuses_ids_out_of_normal_form_and_bad_sizes() -> None:
    with pytest.raises(BadDeviceId):
        transcript(**{**FIELDS, "device_id": "u\u0308"})
    with pytest.raises(BadDeviceId):
        transcript(**{**FIELDS, "device_id": "a\x00"})
    for change in ({"server_nonce": b"x"}, {"cert_sha256": b""}, {"key_id": -1}, {"region": ""}):
        with pytest.raises(ValueError, match=r"bytes|uint32"):
            transcript(**{**FIELDS, **change})


def test_the_directory_round_trips_and_names_unknown_devices(tmp_path: Path) -> None:
    path = tmp_path / "directory.json"
    write_directory(path, "eu-west", directory_keys([("dev-1", 1, DEVICE_KEY), ("dev-1", 2, OTHER_KEY)]))
    directory = read_directory(path, "eu-west")
    assert len(directory) == 1
    key = directory.public_key("dev-1", 2)
    verify_transcript(key, sign_transcript(derive_auth_key(OTHER_KEY), b"x"), b"x")
    with pytest.raises(UnknownDevice):
        directory.public_key("dev-2", 1)
    with pytest.raises(UnknownDevice):
        directory.public_key("dev-1", 3)
    with pytest.raises(DirectoryError):
        read_directory(path, "us-east")
    with pytest.raises(DirectoryError):
        read_directory(tmp_path / "missing.json", "eu-west")


@pytest.mark.parametrize(
    "document",
    [
        [],
        {"region": "eu-west"},
        {"region": "eu-west", "devices": []},
        {"region": "eu-west", "devices": {"d": {}}},
        {"region": "eu-west", "devices": {"d": {"x": base64.b64encode(bytes(32)).decode()}}},
        {"region": "eu-west", "devices": {"d": {"1": "not base64!"}}},
        {"region": "eu-west", "devices": {"d": {"1": base64.b64encode(bytes(31)).decode()}}},
        {"region": "eu-west", "devices": {"a\x01": {"1": base64.b64encode(bytes(32)).decode()}}},
    ],
)
def test_a_malformed_directory_is_a_config_error(document: object) -> None:
    with pytest.raises(DirectoryError):
        parse_directory(json.loads(json.dumps(document)), "eu-west")


def test_frames_round_trip() -> None:
    auth = Auth("dev-1", 3, b"n" * 32, b"s" * 64)
    assert parse_auth(decode_frame(auth_frame(auth))) == auth
    env = parse_env(decode_frame(encode_frame("env", body=b"abc", fb=2, tp="00-x", extra=1)))
    assert (env.body, env.fallbacks, env.traceparent) == (b"abc", 2, "00-x")
    assert parse_env(decode_frame(encode_frame("env", body=b""))).fallbacks == 0
    assert parse_ack(decode_frame(encode_frame("ack", ids=[b"r" * 16]))) == [b"r" * 16]
    assert parse_get(decode_frame(encode_frame("get", what="artifact", sha256="a" * 64))).sha256 == "a" * 64
    hello = parse_hello(
        decode_frame(encode_frame("hello", v=1, region="r", gateway="g", nonce=b"n" * 32, now_ms=5))
    )
    assert hello.nonce == b"n" * 32


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xc1",
        msgpack.packb([1, 2]),
        msgpack.packb({"x": 1}),
        msgpack.packb({"t": 1}),
        msgpack.packb({"t": "a"}) + b"\x00",
        b"\xa2\xff\xfe",
        "text",
    ],
)
def test_decode_frame_refuses_what_is_not_a_frame(raw: object) -> None:
    with pytest.raises(BadFrame):
        decode_frame(raw)


PARSERS = (parse_auth, parse_env, parse_ack, parse_get, parse_hello)
msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats()
    | st.text(max_size=40)
    | st.binary(max_size=80),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_decoding_random_bytes_raises_only_bad_frame(raw: bytes) -> None:
    try:
        frame = decode_frame(raw)
    except BadFrame:
        return
    for parse in PARSERS:
        with contextlib.suppress(BadFrame):
            parse(frame)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(["auth", "env", "ack", "get", "hello", "time"]),
    st.dictionaries(
        st.sampled_from(
            [
                "device",
                "key_id",
                "nonce",
                "sig",
                "body",
                "fb",
                "tp",
                "ids",
                "what",
                "sha256",
                "v",
                "region",
                "gateway",
                "now_ms",
            ]
        ),
        msgpack_values,
        max_size=6,
    ),
)
def test_fuzz_well_formed_maps_with_hostile_fields_raise_only_bad_frame(
    kind: str, fields: dict[str, Any]
) -> None:
    try:
        raw = msgpack.packb({"t": kind, **fields}, use_bin_type=True)
    except (OverflowError, ValueError, TypeError):
        return
    try:
        frame = decode_frame(raw)
    except BadFrame:  # more arrays and maps than a frame may hold: refused before it is built
        return
    for parse in PARSERS:
        with contextlib.suppress(BadFrame):
            parse(frame)


VECTOR: dict[str, str | int] = {
    "device_key_hex": "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
    "region": "eu-west",
    "cert_der_sha256_hex": "a0" * 32,
    "server_nonce_hex": "b1" * 32,
    "client_nonce_hex": "c2" * 32,
    "device_id": "dev-00042",
    "key_id": 7,
}


def gateway_auth_vector() -> dict[str, str | int]:
    """The gateway authentication vector of docs/contract.md section 15: inputs, then what a device
    derives and signs (Ed25519 signatures are deterministic, RFC 8032)."""
    v = VECTOR
    key = derive_auth_key(bytes.fromhex(str(v["device_key_hex"])))
    data = transcript(
        region=str(v["region"]),
        cert_sha256=bytes.fromhex(str(v["cert_der_sha256_hex"])),
        server_nonce=bytes.fromhex(str(v["server_nonce_hex"])),
        client_nonce=bytes.fromhex(str(v["client_nonce_hex"])),
        device_id=str(v["device_id"]),
        key_id=int(v["key_id"]),
    )
    return {
        **v,
        "auth_seed_hex": key.private_bytes_raw().hex(),
        "auth_public_key_hex": auth_public_key(bytes.fromhex(str(v["device_key_hex"]))).hex(),
        "transcript_hex": data.hex(),
        "signature_hex": sign_transcript(key, data).hex(),
    }


def test_the_documented_gateway_auth_vector_is_what_the_code_derives() -> None:
    doc = (Path(__file__).resolve().parents[3] / "docs" / "contract.md").read_text(encoding="utf-8")
    block = doc.split("<!-- gateway-auth-vector:begin -->\n```json\n")[1].split(
        "```\n<!-- gateway-auth-vector:end -->"
    )[0]
    assert json.loads(block) == gateway_auth_vector()
