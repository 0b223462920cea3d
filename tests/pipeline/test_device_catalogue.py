"""The signed device catalogue: built from the registry's state (stable, pinnable, local per tier), it
round-trips, and every tampered field, a wrong key, an untrusted key, an expired or malformed file is
refused with its reason."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from edgestream.pipeline.contract import fields as f
from edgestream.pipeline.registry import Manifest, ModelState, SigningKey, TrustedKeys, allow_pin, publish
from edgestream.pipeline.registry.devicecatalogue import (
    CATALOGUE_CONTEXT,
    BadCatalogueSignature,
    CatalogueExpired,
    MalformedCatalogue,
    build_catalogue,
    sign_catalogue,
    verify_catalogue,
)
from edgestream.pipeline.registry.errors import UntrustedSigner

NOW = 1_750_000_000_000


def _manifest(model: str, version: int, variant: str, shape: tuple[int, ...], dtype: str) -> Manifest:
    return Manifest(
        model=model,
        version=version,
        variant=variant,
        sha256=f"{version:02x}" * 32,
        size_bytes=1000 * version,
        input_dtype=dtype,
        input_shape=shape,
    )


def registry_states(key: SigningKey) -> dict[str, ModelState]:
    """embedding-scorer: v1 medium (stable), v2 tiny (pinnable), v3 full (published only)."""
    state = ModelState("embedding-scorer")
    for version, variant in ((1, "medium"), (2, "tiny"), (3, "full")):
        signed = key.sign(_manifest("embedding-scorer", version, variant, (30,), "float16"))
        state = publish(state, signed, now_ms=NOW)
    state = allow_pin(state, 2, now_ms=NOW)
    frames = publish(
        ModelState("frame-classifier"),
        key.sign(_manifest("frame-classifier", 1, "tiny", (32, 32), "uint8")),
        now_ms=NOW,
    )
    return {"embedding-scorer": state, "frame-classifier": frames}


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def trusted(key: SigningKey) -> TrustedKeys:
    return TrustedKeys().with_key(key.public_raw)


def test_build_picks_stable_pinnable_and_local_per_tier(key: SigningKey, trusted: TrustedKeys) -> None:
    built = build_catalogue(registry_states(key), now_ms=NOW, ttl_ms=60_000)
    routes = {(e.family, e.tier): (e.version, e.route) for e in built.models}
    assert routes == {
        ("embedding-scorer", "medium"): (1, "stable"),
        ("embedding-scorer", "tiny"): (2, "pin"),
        ("embedding-scorer", "full"): (3, "local"),
        ("frame-classifier", "tiny"): (1, "stable"),
    }
    tiny = built.entry("frame-classifier", "tiny")
    assert tiny is not None
    assert (tiny.input.kind, tiny.input.dtype, tiny.input.shape) == ("frame", "uint8", (32, 32))
    assert tiny.input.classes == tuple(str(d) for d in range(10))
    assert tiny.sha256 == "01" * 32
    assert tiny.size_bytes == 1000
    again = verify_catalogue(sign_catalogue(key, built), trusted, now_ms=NOW + 1)
    assert again == built


def _signed(key: SigningKey) -> dict[str, Any]:
    built = build_catalogue(registry_states(key), now_ms=NOW, ttl_ms=60_000)
    loaded: dict[str, Any] = json.loads(sign_catalogue(key, built))
    return loaded


TAMPERS: list[tuple[str, Any]] = [
    ("issued_ms", lambda c: c.__setitem__("issued_ms", NOW - 1)),
    ("expires_ms", lambda c: c.__setitem__("expires_ms", NOW + 10**9)),
    ("family", lambda c: c["models"][0].__setitem__("family", "fraud")),
    ("tier", lambda c: c["models"][0].__setitem__("tier", "tiny2")),
    ("version", lambda c: c["models"][0].__setitem__("version", 9)),
    ("route", lambda c: c["models"][2].__setitem__("route", "stable")),
    ("sha256", lambda c: c["models"][0].__setitem__("sha256", "ff" * 32)),
    ("bytes", lambda c: c["models"][0].__setitem__("bytes", 1)),
    ("input.shape", lambda c: c["models"][0]["input"].__setitem__("shape", [31])),
    ("input.dtype", lambda c: c["models"][0]["input"].__setitem__("dtype", "float32")),
    ("a model removed", lambda c: c["models"].pop()),
    ("an extra key", lambda c: c.__setitem__("note", "x")),
]


@pytest.mark.parametrize(("what", "tamper"), TAMPERS, ids=[t[0] for t in TAMPERS])
def test_tampering_any_field_fails(key: SigningKey, trusted: TrustedKeys, what: str, tamper: Any) -> None:
    signed = _signed(key)
    tamper(signed["catalogue"])
    with pytest.raises(BadCatalogueSignature) as caught:
        verify_catalogue(json.dumps(signed).encode(), trusted, now_ms=NOW + 1)
    assert caught.value.reason == "bad_signature"


def test_another_key_or_an_untrusted_one_fails(key: SigningKey, trusted: TrustedKeys) -> None:
    signed = _signed(SigningKey.generate())
    with pytest.raises(UntrustedSigner) as caught:
        verify_catalogue(json.dumps(signed).encode(), trusted, now_ms=NOW + 1)
    assert caught.value.reason == "untrusted_signer"
    other = SigningKey.generate()
    forged = _signed(other)
    forged["key_id"] = key.key_id  # claims the trusted key; signed by another
    with pytest.raises(BadCatalogueSignature):
        verify_catalogue(json.dumps(forged).encode(), trusted.with_key(other.public_raw), now_ms=NOW + 1)


def test_expired_or_not_yet_valid_fails(key: SigningKey, trusted: TrustedKeys) -> None:
    raw = json.dumps(_signed(key)).encode()
    for now in (NOW + 60_000, NOW + 10**9, NOW - 1):
        with pytest.raises(CatalogueExpired) as caught:
            verify_catalogue(raw, trusted, now_ms=now)
        assert caught.value.reason == "catalogue_expired"
    assert verify_catalogue(raw, trusted, now_ms=NOW + 59_999).expires_ms == NOW + 60_000


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"[]",
        b'{"catalogue": {}, "key_id": "k"}',
        b'{"catalogue": 1, "key_id": "k", "signature": ""}',
        b'{"catalogue": {}, "key_id": "k", "signature": "AAAA"}',
        b"{" * 100_000,
        b"\xff\xfe",
        b"x" * (2 << 20),
    ],
)
def test_malformed_files_are_refused(trusted: TrustedKeys, raw: bytes) -> None:
    with pytest.raises(MalformedCatalogue) as caught:
        verify_catalogue(raw, trusted, now_ms=NOW)
    assert caught.value.reason == "bad_catalogue"


def test_a_signed_but_malformed_catalogue_is_refused(key: SigningKey, trusted: TrustedKeys) -> None:
    """Well signed is not enough: a signer's bug (a bad sha256) is refused by the parser."""
    body = _signed(key)["catalogue"]
    body["models"][0]["sha256"] = "not hex"
    signature = key.sign_message(CATALOGUE_CONTEXT + key.key_id.encode() + b"\0" + f.dump_json(body))
    raw = json.dumps(
        {"catalogue": body, "key_id": key.key_id, "signature": base64.b64encode(signature).decode()}
    ).encode()
    with pytest.raises(MalformedCatalogue):
        verify_catalogue(raw, trusted, now_ms=NOW + 1)


def test_a_model_without_an_input_spec_is_left_out_and_said(key: SigningKey) -> None:
    states = registry_states(key)
    odd = publish(ModelState("odd"), key.sign(_manifest("odd", 1, "medium", (4,), "float32")), now_ms=NOW)
    skipped: list[str] = []
    built = build_catalogue({**states, "odd": odd}, now_ms=NOW, skipped=skipped)
    assert {e.family for e in built.models} == {"embedding-scorer", "frame-classifier"}
    assert len(skipped) == 1
    assert skipped[0].startswith("odd/medium: ")
