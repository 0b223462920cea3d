"""Sealed replies (``pipeline/contract/reply.py``, ``docs/contract.md`` section 10, "Sealed replies"):
the documented vectors re-derive byte for byte and the tampered ones fail with their reason; a reply
opens only under its own device's key, in its own region, for its own request; any changed byte of
it (header, nonce, ciphertext, tag) is refused; an authentic reply whose record disagrees with its
header is refused too.

``python -m tests.pipeline.contract.test_reply`` rewrites the vector block of docs/contract.md."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Final

import msgpack
import pytest

from edgestream.pipeline.contract.envelope import NONCE_BYTES
from edgestream.pipeline.contract.records import ResultRecord
from edgestream.pipeline.contract.reply import (
    MIN_REPLY_BYTES,
    REPLY_AAD_DOMAIN,
    REPLY_KEY_INFO,
    REPLY_KEY_SALT,
    MalformedReply,
    ReplyAuthenticationFailed,
    ReplyForAnotherRequest,
    ReplyHeader,
    ReplyKey,
    ReplyRecordMismatch,
    ReplyRefused,
    UnsupportedReplyVersion,
    derive_reply_key,
    open_reply,
    read_reply_header,
    reply_aad,
    reply_header,
    seal_reply,
)

DOC: Final = Path(__file__).resolve().parents[3] / "docs" / "contract.md"
VECTORS: Final = Path(__file__).resolve().parent / "vectors" / "contract_v1.json"
BLOCK: Final = re.compile(
    r"<!-- sealed-reply-vectors:begin -->\n```json\n(.*?)```\n<!-- sealed-reply-vectors:end -->", re.S
)

# Vector 1's device (section 14): its device key, request id and model.
REQUEST_ID: Final = bytes.fromhex("018bcfe568007abc9def0123456789ab")
INPUTS: Final[dict[str, Any]] = {
    "device_key_hex": "3751f2b0c6c0b04340e22baf3883f68a467e4f6ba5bab0f5153ed547e10b4934",
    "key_id": 7,
    "region": "eu-west",
    "nonce_hex": "b0b1b2b3b4b5b6b7b8b9babb",
    "record": {
        "v": 1, "rid": REQUEST_ID.hex(), "dev": "sensor-0042", "model": "embedding-scorer", "mver": 3,
        "label": 1, "scores": [0.25, 0.75], "q_ms": 0.5, "i_ms": 0.25, "t_ms": 3.0, "bs": 4,
        "node": "eu-west-a", "region": "eu-west", "at_ms": 1700000000500,
    },
}  # fmt: skip
OTHER_DEVICE_KEY: Final = "59cb0698523c7a2b13eb851554f4c311ba12102334e502d8a5e1776ada101359"
"""Vector 2's device key (section 14): another device."""


def _record(fields: dict[str, Any]) -> ResultRecord:
    wire = dict(fields, rid=bytes.fromhex(fields["rid"]))
    return ResultRecord.from_bytes(msgpack.packb(wire, use_bin_type=True))


def _flipped(raw: bytes, at: int) -> str:
    return (raw[:at] + bytes([raw[at] ^ 0x01]) + raw[at + 1 :]).hex()


def build_reply_vectors() -> dict[str, Any]:
    """The sealed reply vector of docs/contract.md, and its tampered copies with the reason each fails."""
    record = _record(INPUTS["record"])
    device_key = bytes.fromhex(INPUTS["device_key_hex"])
    header = ReplyHeader(record.request_id, INPUTS["key_id"], record.model, record.model_version)
    fixed = reply_header(header)
    nonce = bytes.fromhex(INPUTS["nonce_hex"])
    sealed = seal_reply(record.to_bytes(), ReplyKey(device_key), header, INPUTS["region"], nonce=nonce)
    body = len(fixed) + len(nonce)
    tampered = [
        ("a ciphertext byte flipped", _flipped(sealed, body), None, "reply_bad_tag"),
        ("a tag byte flipped", _flipped(sealed, len(sealed) - 1), None, "reply_bad_tag"),
        ("a nonce byte flipped", _flipped(sealed, len(fixed)), None, "reply_bad_tag"),
        ("request id changed", _flipped(sealed, 2 + 15), None, "reply_bad_tag"),
        ("model version changed (3 -> 2)", _flipped(sealed, 25), None, "reply_bad_tag"),
        ("opened as region eu-east", sealed.hex(), {"region": "eu-east"}, "reply_bad_tag"),
        ("opened with vector 2's device key", sealed.hex(), {"device_key_hex": OTHER_DEVICE_KEY},
         "reply_bad_tag"),
        ("contract version 2", "0002" + sealed[2:].hex(), None, "reply_bad_version"),
        ("cut 15 bytes after the nonce (no tag)", sealed[: body + 15].hex(), None, "reply_malformed"),
    ]  # fmt: skip
    return {
        "about": "Sealed reply test vectors; see docs/contract.md section 10. sealed = header, nonce, "
        "ciphertext and its 16-byte tag.",
        "inputs": INPUTS,
        "record_hex": record.to_bytes().hex(),
        "reply_key_hex": derive_reply_key(device_key).hex(),
        "header_hex": fixed.hex(),
        "aad_hex": reply_aad(fixed, INPUTS["region"]).hex(),
        "sealed_hex": sealed.hex(),
        "tampered": [
            {"what": what, "sealed_hex": hex_, "open_with": with_ or {}, "reason": reason}
            for what, hex_, with_, reason in tampered
        ],
    }


def _documented() -> dict[str, Any]:
    match = BLOCK.search(DOC.read_text(encoding="utf-8"))
    assert match is not None, "docs/contract.md lost its sealed reply vectors"
    vectors: dict[str, Any] = json.loads(match.group(1))
    return vectors


def _sealed(record: ResultRecord, device_key: bytes, region: str = "eu-west") -> bytes:
    header = ReplyHeader(record.request_id, 7, record.model, record.model_version)
    return seal_reply(record.to_bytes(), ReplyKey(device_key), header, region)


# --- the documented vectors ----------------------------------------------------------------------


def test_the_documented_vector_rederives_byte_for_byte() -> None:
    assert _documented() == build_reply_vectors()
    doc = _documented()
    # It chains from section 14's vector 1: the device key that vector derives, its request id.
    vector_1 = json.loads(VECTORS.read_text(encoding="utf-8"))["vectors"][0]
    assert doc["inputs"]["device_key_hex"] == vector_1["device_key_hex"]
    assert doc["inputs"]["record"]["rid"] == vector_1["inputs"]["request_id_hex"]
    # The parts the doc spells out, independently of the reference's helpers.
    assert bytes.fromhex(doc["aad_hex"]).startswith(REPLY_AAD_DOMAIN + bytes.fromhex(doc["header_hex"]))
    assert doc["sealed_hex"].startswith(doc["header_hex"] + doc["inputs"]["nonce_hex"])
    assert REPLY_KEY_INFO == b"edgestream/reply-key\x00\x01"
    assert bytes(32) == REPLY_KEY_SALT
    sealed = bytes.fromhex(doc["sealed_hex"])
    opened = open_reply(sealed, bytes.fromhex(doc["inputs"]["device_key_hex"]), "eu-west")
    assert opened.to_bytes().hex() == doc["record_hex"]


@pytest.mark.parametrize("vector", build_reply_vectors()["tampered"], ids=lambda v: v["what"])
def test_each_documented_tampered_reply_fails_with_its_reason(vector: dict[str, Any]) -> None:
    inputs = {**INPUTS, **vector["open_with"]}
    with pytest.raises(ReplyRefused) as refused:
        open_reply(
            bytes.fromhex(vector["sealed_hex"]), bytes.fromhex(inputs["device_key_hex"]), inputs["region"]
        )
    assert refused.value.reason == vector["reason"]


# --- who can open it -----------------------------------------------------------------------------


def test_a_reply_opens_under_its_own_device_key_only() -> None:
    record = _record(INPUTS["record"])
    keys = [bytes([n]) * 32 for n in range(5)]
    for mine in keys:
        sealed = _sealed(record, mine)
        assert open_reply(sealed, mine, "eu-west") == record
        assert open_reply(sealed, ReplyKey(mine), "eu-west", request_id=REQUEST_ID) == record
        for other in keys:
            if other != mine:
                with pytest.raises(ReplyAuthenticationFailed):
                    open_reply(sealed, other, "eu-west")
        # The envelope key is never the reply key: the device key itself does not open a reply.
        assert derive_reply_key(mine) != mine
        with pytest.raises(ReplyAuthenticationFailed):
            _open_raw(sealed, mine)


def _open_raw(sealed: bytes, key: bytes) -> None:
    """Try the device key itself as the reply cipher's key (a sealer that skipped the derivation)."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    header, end = read_reply_header(sealed)
    try:
        nonce, ciphertext = sealed[end : end + NONCE_BYTES], sealed[end + NONCE_BYTES :]
        AESGCM(key).decrypt(nonce, ciphertext, reply_aad(sealed[:end], "eu-west"))
    except InvalidTag as e:
        raise ReplyAuthenticationFailed(header.model) from e


def test_each_reply_has_a_fresh_nonce() -> None:
    record, key = _record(INPUTS["record"]), bytes(32)
    replies = {_sealed(record, key) for _ in range(50)}
    assert len(replies) == 50
    assert len({r[28 + len(record.model) :][:12] for r in replies}) == 50


def test_a_reply_is_refused_in_another_region_and_for_another_request() -> None:
    record, key = _record(INPUTS["record"]), bytes(32)
    sealed = _sealed(record, key)
    with pytest.raises(ReplyAuthenticationFailed):
        open_reply(sealed, key, "eu-east")
    with pytest.raises(ReplyForAnotherRequest) as other:
        open_reply(sealed, key, "eu-west", request_id=bytes(16))
    assert other.value.reason == "reply_other_request"


def test_every_changed_byte_is_refused() -> None:
    record, key = _record(INPUTS["record"]), bytes(32)
    sealed = _sealed(record, key)
    header_end = 28 + len(record.model)
    for at in range(len(sealed)):
        for bit in (0x01, 0x80):
            changed = sealed[:at] + bytes([sealed[at] ^ bit]) + sealed[at + 1 :]
            with pytest.raises(ReplyRefused) as refused:
                open_reply(changed, key, "eu-west")
            if 2 <= at < 26 or at >= header_end:  # rid, key id, model version; nonce, ciphertext, tag
                assert refused.value.reason == "reply_bad_tag", at
    for cut in range(len(sealed)):  # truncated anywhere
        with pytest.raises(ReplyRefused):
            open_reply(sealed[:cut], key, "eu-west")
    with pytest.raises(ReplyAuthenticationFailed):
        open_reply(sealed + b"\x00", key, "eu-west")


# --- malformed and mismatched --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"", MalformedReply),
        (bytes(MIN_REPLY_BYTES - 1), MalformedReply),
        (b"\x00\x02" + bytes(MIN_REPLY_BYTES), UnsupportedReplyVersion),
        (b"\x00\x01" + bytes(24) + b"\x00\x00" + bytes(40), MalformedReply),  # empty model
        (b"\x00\x01" + bytes(24) + b"\x00\x81" + bytes(200), MalformedReply),  # model over 128 bytes
        (b"\x00\x01" + bytes(24) + b"\x00\x01\xff" + bytes(28), MalformedReply),  # model not UTF-8
        (b"\x00\x01" + bytes(24) + b"\x00\x05abc" + bytes(28), MalformedReply),  # no room for the tag
    ],
)
def test_malformed_replies_are_refused_with_a_stable_reason(raw: bytes, error: type[ReplyRefused]) -> None:
    with pytest.raises(error) as refused:
        open_reply(raw, bytes(32), "eu-west")
    assert refused.value.reason == error.reason


@pytest.mark.parametrize(
    "header",
    [
        ReplyHeader(bytes(16), 7, "embedding-scorer", 3),  # another request id than the record's
        ReplyHeader(REQUEST_ID, 7, "frame-classifier", 3),
        ReplyHeader(REQUEST_ID, 7, "embedding-scorer", 4),
    ],
)
def test_an_authentic_reply_whose_record_disagrees_with_its_header_is_refused(header: ReplyHeader) -> None:
    record, key = _record(INPUTS["record"]), bytes(32)
    sealed = seal_reply(record.to_bytes(), ReplyKey(key), header, "eu-west")
    with pytest.raises(ReplyRecordMismatch) as refused:
        open_reply(sealed, key, "eu-west")
    assert refused.value.reason == "reply_mismatch"
    # A record of another region sealed for this one, and a plaintext that is no record, likewise.
    for plaintext in (_record({**INPUTS["record"], "region": "eu-east"}).to_bytes(), b"\x01junk"):
        header = ReplyHeader(REQUEST_ID, 7, "embedding-scorer", 3)
        with pytest.raises(ReplyRecordMismatch):
            open_reply(seal_reply(plaintext, ReplyKey(key), header, "eu-west"), key, "eu-west")


@pytest.mark.parametrize(
    ("header", "words"),
    [
        (ReplyHeader(bytes(15), 7, "m", 3), "request ids are 16 bytes"),
        (ReplyHeader(REQUEST_ID, 7, "", 3), "model must be 1..128"),
        (ReplyHeader(REQUEST_ID, 7, "m" * 129, 3), "model must be 1..128"),
        (ReplyHeader(REQUEST_ID, -1, "m", 3), "uint32"),
        (ReplyHeader(REQUEST_ID, 7, "m", 2**32), "uint32"),
    ],
)
def test_sealing_refuses_a_header_it_could_not_write(header: ReplyHeader, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        seal_reply(b"", ReplyKey(bytes(32)), header, "eu-west")


def test_sealing_refuses_bad_keys_nonces_and_regions() -> None:
    header = ReplyHeader(REQUEST_ID, 7, "m", 3)
    with pytest.raises(ValueError, match="device keys are 32 bytes"):
        ReplyKey(bytes(16))
    with pytest.raises(ValueError, match="nonces are 12 bytes"):
        seal_reply(b"", ReplyKey(bytes(32)), header, "eu-west", nonce=bytes(8))
    for region in ("", "r" * 256):
        with pytest.raises(ValueError, match="region must be"):
            seal_reply(b"", ReplyKey(bytes(32)), header, region)


def _regenerate() -> None:
    text = json.dumps(build_reply_vectors(), indent=2, ensure_ascii=False) + "\n"
    text = re.sub(r"\[\s*([-0-9.,\s]+?)\s*\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    block = f"<!-- sealed-reply-vectors:begin -->\n```json\n{text}```\n<!-- sealed-reply-vectors:end -->"
    doc = DOC.read_text(encoding="utf-8")
    DOC.write_text(BLOCK.sub(lambda _: block, doc), encoding="utf-8")


if __name__ == "__main__":
    _regenerate()
