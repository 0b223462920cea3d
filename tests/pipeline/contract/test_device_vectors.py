"""Vectors 3 and 4 of contract section 14 ("An enrolled device and an int8 body"), and envelopes that
must fail: re-derived byte for byte from their inputs, opened back, and kept equal to the doc's block.

Run this file as a script to regenerate ``vectors/contract_v1_devices.json`` and its copy in
``docs/contract.md`` (only when the contract changes on purpose):
``.venv/bin/python tests/pipeline/contract/test_device_vectors.py``.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edgestream.pipeline.contract.codec import decode_tensor
from edgestream.pipeline.contract.envelope import CONTRACT_VERSION, decode_envelope, open_envelope
from edgestream.pipeline.errors import AuthenticationFailed, ContractError
from edgestream.pipeline.security.derive import HKDF_SALT, derive_device_key
from edgestream.pipeline.security.keyring import Enrolment, KeyRing
from tests.pipeline.contract.test_envelope import DOC_FILE, build_vector, vector_body

VECTOR_FILE = Path(__file__).resolve().parent / "vectors" / "contract_v1_devices.json"
DOC_BLOCK = re.compile(
    r"<!-- test-vector-devices:begin -->\n```json\n(.*?)```\n<!-- test-vector-devices:end -->", re.DOTALL
)
MAX_BYTES = 1 << 20
REGION = "eu-west"

VECTOR_INPUTS: list[dict[str, Any]] = [
    {
        "name": "enrolled-device-float16-unpinned-uncompressed",
        "master_key_hex": bytes(range(32)).hex(),
        "salt_hex": bytes(range(0x40, 0x60)).hex(),
        "device_id": "meter-0007",
        "key_id": 2,
        "request_id_hex": "018bcfe5718a7c0d8e0f101112131415",
        "capture_time_ms": 1_700_000_002_442,
        "kind": "embedding",
        "model": "embedding-scorer",
        "model_version": None,
        "compression": "none",
        "nonce_hex": "b0b1b2b3b4b5b6b7b8b9babb",
        "tensor": {"dtype": "float16", "shape": [4], "values": [1.5, -0.25, 8.0, 0.0]},
        "attrs": {},
    },
    {
        "name": "int8-pinned-uncompressed",
        "master_key_hex": bytes(range(32)).hex(),
        "device_id": "terminal-7",
        "key_id": 7,
        "request_id_hex": "018bcfe573fe7a1b9c1d1e1f20212223",
        "capture_time_ms": 1_700_000_003_070,
        "kind": "embedding",
        "model": "fraud-scorer",
        "model_version": 2,
        "compression": "none",
        "nonce_hex": "c0c1c2c3c4c5c6c7c8c9cacb",
        # max |x| = 63.5, so scale = 63.5 / 127 = 0.5 exactly and every q * scale gives x back.
        "tensor": {"dtype": "int8", "shape": [2, 3], "values": [63.5, -63.5, 0.0, 1.0, -2.5, 10.0]},
        "attrs": {},
    },
]
"""Vector 3: a device enrolled in its region (section 7: its own secret salt). Vector 4: an int8 body
(section 4: symmetric quantisation, its scale in ``sc``)."""


def _flip_last_byte(raw: bytes) -> bytes:
    return raw[:-1] + bytes([raw[-1] ^ 0x01])


def build_must_fail(vectors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Envelopes a receiver MUST refuse, each with the device key it is tried under and the reason."""
    enrolled, int8 = vectors
    public_salt_key = derive_device_key(
        bytes.fromhex(enrolled["inputs"]["master_key_hex"]),
        enrolled["inputs"]["device_id"],
        enrolled["inputs"]["key_id"],
        salt=HKDF_SALT,
    )
    return [
        {
            "name": "vector 4 with the last byte of its tag flipped",
            "envelope_hex": _flip_last_byte(bytes.fromhex(int8["envelope_hex"])).hex(),
            "device_key_hex": int8["device_key_hex"],
            "reason": "bad_tag",
        },
        {
            "name": "vector 3 opened with the key the public salt gives (the device is enrolled)",
            "envelope_hex": enrolled["envelope_hex"],
            "device_key_hex": public_salt_key.hex(),
            "reason": "bad_tag",
        },
    ]


def build_vector_file() -> dict[str, Any]:
    vectors = [build_vector(inputs) for inputs in VECTOR_INPUTS]
    return {
        "contract_version": CONTRACT_VERSION,
        "about": "Vectors 3 and 4 (an enrolled device, an int8 body) and envelopes that must fail; "
        "see docs/contract.md, section 14.",
        "vectors": vectors,
        "must_fail": build_must_fail(vectors),
    }


def _stored() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(VECTOR_FILE.read_text(encoding="utf-8"))
    return document


def test_rebuilding_from_the_inputs_gives_the_stored_file_byte_for_byte() -> None:
    assert build_vector_file() == _stored()  # uncompressed: no libzstd choice to excuse


@pytest.mark.parametrize("index", range(len(VECTOR_INPUTS)))
def test_opening_each_stored_envelope_gives_the_exact_values_back(index: int) -> None:
    stored = _stored()["vectors"][index]
    envelope = decode_envelope(bytes.fromhex(stored["envelope_hex"]), max_envelope_bytes=MAX_BYTES)
    body = open_envelope(envelope, bytes.fromhex(stored["device_key_hex"]), max_body_bytes=MAX_BYTES)
    assert body == vector_body(stored["inputs"])
    values = decode_tensor(body, dequantise=True).ravel().tolist()
    assert values == stored["inputs"]["tensor"]["values"]


def test_the_enrolled_vector_is_the_key_the_key_ring_gives_an_enrolled_device() -> None:
    inputs = VECTOR_INPUTS[0]
    salt = bytes.fromhex(inputs["salt_hex"])
    ring = KeyRing(
        {REGION: {inputs["key_id"]: bytes.fromhex(inputs["master_key_hex"])}},
        devices={REGION: {inputs["device_id"]: Enrolment(salt)}},
    )
    stored = _stored()["vectors"][0]
    assert stored["hkdf_salt_hex"] == salt.hex()
    assert ring.device_key(REGION, inputs["device_id"], inputs["key_id"]).hex() == stored["device_key_hex"]


def test_the_int8_vector_carries_its_scale_and_symmetric_codes() -> None:
    body = vector_body(VECTOR_INPUTS[1])
    assert body.scale == 0.5
    assert list(body.data) == [127, 256 - 127, 0, 2, 256 - 5, 20]  # int8 codes as bytes; never -128
    assert "a27363cb3fe0000000000000" in _stored()["vectors"][1]["body_hex"]  # "sc": float64 0.5


@pytest.mark.parametrize("index", [0, 1])
def test_each_must_fail_envelope_is_refused_with_its_reason(index: int) -> None:
    case = _stored()["must_fail"][index]
    envelope = decode_envelope(bytes.fromhex(case["envelope_hex"]), max_envelope_bytes=MAX_BYTES)
    with pytest.raises(ContractError) as info:
        open_envelope(envelope, bytes.fromhex(case["device_key_hex"]), max_body_bytes=MAX_BYTES)
    assert isinstance(info.value, AuthenticationFailed)
    assert info.value.reason == case["reason"]


def test_the_doc_shows_exactly_the_stored_device_vectors() -> None:
    match = DOC_BLOCK.search(DOC_FILE.read_text(encoding="utf-8"))
    assert match is not None, "docs/contract.md lost its enrolled/int8 test-vector block"
    assert json.loads(match.group(1)) == _stored()


# --- an independent derivation: the document's tables, the cryptography package, nothing of ours ---


def _u16(n: int) -> bytes:
    return struct.pack(">H", n)


def _independent_envelope(inputs: dict[str, Any]) -> bytes:
    """Vector 3 or 4 built from sections 3-8 of the contract alone (uncompressed float16 or int8)."""
    device, kind, model = (inputs[k].encode() for k in ("device_id", "kind", "model"))
    info = (
        b"edgestream/device-key" + _u16(1) + struct.pack(">I", inputs["key_id"]) + _u16(len(device)) + device
    )
    salt = bytes.fromhex(inputs.get("salt_hex", b"edgestream/hkdf-salt/v1".hex()))
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(
        bytes.fromhex(inputs["master_key_hex"])
    )
    tensor = inputs["tensor"]
    values = np.array(tensor["values"], dtype=np.float64)
    body: dict[str, Any] = {"dt": tensor["dtype"], "sh": tensor["shape"]}
    if tensor["dtype"] == "int8":
        scale = float(np.abs(values).max()) / 127
        body["b"] = np.clip(np.round(values / scale), -127, 127).astype("<i1").tobytes()
        body["sc"] = scale
    else:
        body["b"] = values.astype("<f2").tobytes()
    mver = inputs["model_version"]
    rid, ts = bytes.fromhex(inputs["request_id_hex"]), inputs["capture_time_ms"]
    aad = (
        b"edgestream/envelope-aad" + _u16(1) + rid + _u16(len(device)) + device + struct.pack(">Q", ts)
        + _u16(len(kind)) + kind + _u16(len(model)) + model
        + (b"\x00" if mver is None else b"\x01" + struct.pack(">I", mver))
        + struct.pack(">I", inputs["key_id"]) + _u16(4) + b"none"
    )  # fmt: skip
    nonce = bytes.fromhex(inputs["nonce_hex"])
    sealed = AESGCM(key).encrypt(nonce, msgpack.packb(body, use_bin_type=True), aad)
    envelope: dict[str, Any] = {"v": 1, "rid": rid, "dev": inputs["device_id"], "ts": ts}
    envelope |= {"kind": inputs["kind"], "model": inputs["model"]}
    envelope |= {} if mver is None else {"mver": mver}
    envelope |= {"kid": inputs["key_id"], "comp": "none", "nonce": nonce, "ct": sealed}
    packed: bytes = msgpack.packb(envelope, use_bin_type=True)
    return packed


@pytest.mark.parametrize("index", range(len(VECTOR_INPUTS)))
def test_an_implementation_from_the_document_alone_reproduces_each_envelope(index: int) -> None:
    stored = _stored()["vectors"][index]
    assert _independent_envelope(stored["inputs"]).hex() == stored["envelope_hex"]


def _regenerate() -> None:
    text = json.dumps(build_vector_file(), indent=2, ensure_ascii=False) + "\n"
    text = re.sub(r"\[\s*([-0-9.,\s]+?)\s*\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    VECTOR_FILE.write_text(text, encoding="utf-8")
    doc = DOC_FILE.read_text(encoding="utf-8")
    block = f"<!-- test-vector-devices:begin -->\n```json\n{text}```\n<!-- test-vector-devices:end -->"
    DOC_FILE.write_text(DOC_BLOCK.sub(lambda _: block, doc), encoding="utf-8")


if __name__ == "__main__":
    _regenerate()
