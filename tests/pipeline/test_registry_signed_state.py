"""Signed rollout states: what a worker applies from ``control.models`` and what it refuses, and the
state parser's totality (any bytes, any JSON value, any part of a valid state replaced: a value or
the registry's own error, never another exception)."""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edgestream.pipeline.errors import ConfigError
from edgestream.pipeline.registry import (
    Manifest,
    ModelState,
    RegistryError,
    SigningKey,
    TrustedKeys,
    publish,
    rollback,
    sha256_hex,
    start_canary,
)
from edgestream.pipeline.registry.client import RegistryClient
from edgestream.pipeline.registry.errors import (
    BadStateSignature,
    MalformedRegistryRecord,
    StaleRevision,
    UnsignedState,
    UntrustedSigner,
)
from edgestream.pipeline.registry.signed_state import SignedState, accept_state, decode_state, sign_state
from edgestream.pipeline.settings import KafkaSettings

from .hostile import json_values, mutated

MODEL = "frame-classifier"
T0_MS = 1_750_000_000_000
KEY = SigningKey.generate()
TRUSTED = TrustedKeys().with_key(KEY.public_raw)


def _state(versions: int = 2) -> ModelState:
    state = ModelState(MODEL)
    for v in range(1, versions + 1):
        data = f"v{v}".encode()
        manifest = Manifest(
            model=MODEL,
            version=v,
            variant="tiny",
            sha256=sha256_hex(data),
            size_bytes=len(data),
            input_dtype="uint8",
            input_shape=(32, 32),
            metrics={"accuracy": 0.9},
            lineage={"parent_version": v - 1 or None},
            created_at_ms=T0_MS,
        )
        state = publish(state, KEY.sign(manifest), now_ms=T0_MS + v)
    return start_canary(state, versions, now_ms=T0_MS + 100) if versions > 1 else state


STATE = _state()
RECORD = sign_state(KEY, STATE).to_bytes()


def test_a_signed_state_round_trips_and_verifies() -> None:
    assert accept_state(MODEL, RECORD, TRUSTED, None) == STATE
    assert accept_state(MODEL, RECORD, TRUSTED, STATE.revision - 1) == STATE
    envelope = json.loads(RECORD)
    assert envelope["format"] == 2
    assert envelope["key_id"] == KEY.key_id
    assert ModelState.from_bytes(envelope["state"].encode()) == STATE


def test_an_unsigned_state_is_refused() -> None:
    with pytest.raises(UnsignedState) as refused:
        accept_state(MODEL, STATE.to_bytes(), TRUSTED, None)
    assert refused.value.reason == "unsigned_state"


def test_a_state_signed_by_an_unpinned_key_is_refused() -> None:
    stranger = SigningKey.generate()
    with pytest.raises(UntrustedSigner) as refused:
        accept_state(MODEL, sign_state(stranger, STATE).to_bytes(), TRUSTED, None)
    assert refused.value.reason == "untrusted_signer"
    assert "rollout state" in str(refused.value)


def _tampered(change: dict[str, Any]) -> bytes:
    envelope = json.loads(RECORD)
    state = json.loads(envelope["state"])
    state.update(change)
    envelope["state"] = json.dumps(state, sort_keys=True, separators=(",", ":"))
    return json.dumps(envelope).encode()


def test_a_tampered_state_is_refused() -> None:
    # The same signature over a state whose canary now serves everyone.
    tampered = _tampered({"canary": {**STATE.to_dict()["canary"], "fraction": 0.25}})
    with pytest.raises(BadStateSignature) as refused:
        accept_state(MODEL, tampered, TRUSTED, None)
    assert refused.value.reason == "bad_signature"


def test_a_signature_names_its_key_and_is_not_a_manifest_signature() -> None:
    envelope = json.loads(RECORD)
    other = SigningKey.generate()
    both = TRUSTED.with_key(other.public_raw)
    envelope["key_id"] = other.key_id  # the signature is KEY's: it does not verify under ``other``
    with pytest.raises(BadStateSignature):
        accept_state(MODEL, json.dumps(envelope).encode(), both, None)


def test_an_older_or_repeated_revision_is_refused() -> None:
    older = sign_state(KEY, STATE).to_bytes()
    newer = rollback(STATE, now_ms=T0_MS + 200, reason="test")
    assert accept_state(MODEL, sign_state(KEY, newer).to_bytes(), TRUSTED, STATE.revision) == newer
    for applied in (newer.revision, newer.revision + 5):
        with pytest.raises(StaleRevision) as refused:
            accept_state(MODEL, older, TRUSTED, applied)
        assert refused.value.reason == "stale_revision"
    with pytest.raises(StaleRevision):
        accept_state(MODEL, sign_state(KEY, newer).to_bytes(), TRUSTED, newer.revision)


def test_a_state_under_another_models_key_is_refused() -> None:
    with pytest.raises(MalformedRegistryRecord, match="holds the state of"):
        accept_state("embedding-scorer", RECORD, TRUSTED, None)


def test_readers_without_trusted_keys_parse_but_do_not_verify() -> None:
    stranger = sign_state(SigningKey.generate(), STATE).to_bytes()
    assert decode_state(MODEL, stranger, None) == STATE
    with pytest.raises(UntrustedSigner):
        decode_state(MODEL, stranger, TRUSTED)


async def test_a_client_without_a_signing_key_does_not_publish() -> None:
    client = RegistryClient(KafkaSettings(bootstrap_servers="127.0.0.1:1"))
    with pytest.raises(ConfigError, match="signing key"):
        await client.publish_state(STATE)


# -- the parser is total ------------------------------------------------------------------------------

_REVISION_1E999 = STATE.to_bytes().replace(f'"revision":{STATE.revision}'.encode(), b'"revision":1e999')


@pytest.mark.parametrize(
    "value",
    [
        _REVISION_1E999,  # int(inf): OverflowError before
        b"[" * 100_000 + b"]" * 100_000,  # RecursionError before
        b'{"format":1,"model":"m","canary":' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}",
        STATE.to_bytes().replace(b'"pinnable":[]', b'"pinnable":[NaN]'),
        STATE.to_bytes().replace(b'"stages":[0.05,0.25,1.0]', b'"stages":[0.05,0.25]'),
        b"\xff\xfe",
    ],
    ids=["revision-1e999", "deep-array", "deep-object", "nan", "stages-without-1", "not-utf8"],
)
def test_hostile_states_are_malformed_records(value: bytes) -> None:
    with pytest.raises(MalformedRegistryRecord):
        ModelState.from_bytes(value)
    if value.isascii():  # even signed by the pinned key: refused, not raised
        signed = SignedState(
            value, KEY.key_id, KEY.sign_message(SignedState(value, KEY.key_id, b"").message())
        )
        with pytest.raises(MalformedRegistryRecord):
            accept_state(MODEL, signed.to_bytes(), TRUSTED, None)


def _refused_or_parsed(parse: Any, *args: Any) -> None:
    with contextlib.suppress(RegistryError):  # the declared error: skipped, logged and counted
        parse(*args)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
@example(_REVISION_1E999)
@example(b"[" * 5000)
def test_state_bytes_never_raise_another_error(value: bytes) -> None:
    _refused_or_parsed(ModelState.from_bytes, value)
    _refused_or_parsed(accept_state, MODEL, value, TRUSTED, 3)


@settings(max_examples=300, deadline=None)
@given(json_values)
@example({"format": 1, "revision": float("inf")})
def test_any_json_value_as_a_state_never_raises_another_error(value: Any) -> None:
    _refused_or_parsed(ModelState.from_dict, value)
    _refused_or_parsed(ModelState.from_bytes, json.dumps(value).encode())
    _refused_or_parsed(accept_state, MODEL, json.dumps(value).encode(), TRUSTED, None)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(STATE.to_dict(), json_values))
def test_a_state_with_any_part_replaced_never_raises_another_error(value: Any) -> None:
    """Signed by the pinned key, so the state parser itself sees it (a buggy or compromised publisher
    must not crash a worker either)."""
    _refused_or_parsed(ModelState.from_dict, value)
    try:
        body = json.dumps(value, sort_keys=True).encode()
    except ValueError:
        return  # not representable as JSON text
    message = SignedState(body, KEY.key_id, b"").message()
    signed = SignedState(body, KEY.key_id, KEY.sign_message(message)).to_bytes()
    _refused_or_parsed(accept_state, MODEL, signed, TRUSTED, None)


@settings(max_examples=300, deadline=None)
@given(mutated(json.loads(RECORD), json_values))
def test_a_record_envelope_with_any_part_replaced_never_raises_another_error(value: Any) -> None:
    _refused_or_parsed(accept_state, MODEL, json.dumps(value).encode(), TRUSTED, None)


def test_the_signature_field_must_be_base64_of_64_bytes() -> None:
    envelope = json.loads(RECORD)
    for bad in ("not base64!", base64.b64encode(b"x" * 63).decode(), ""):
        envelope["signature"] = bad
        with pytest.raises(MalformedRegistryRecord):
            SignedState.from_bytes(json.dumps(envelope).encode())
