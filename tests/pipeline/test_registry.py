"""The registry's pure logic: the artifact store, signed manifests, state transitions, routing."""

from __future__ import annotations

import dataclasses
import os
import stat
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgestream.pipeline.errors import ConfigError, EdgestreamError, UnknownModel
from edgestream.pipeline.registry import (
    ArtifactMismatch,
    ArtifactNotFound,
    BadSignature,
    InvalidTransition,
    LocalArtifactStore,
    MalformedRegistryRecord,
    Manifest,
    ModelState,
    PinNotAllowed,
    SignedManifest,
    SigningKey,
    TrustedKeys,
    UntrustedSigner,
    advance,
    allow_pin,
    choose_version,
    disallow_pin,
    load_verified,
    publish,
    rollback,
    sha256_hex,
    start_canary,
    verify,
)
from edgestream.pipeline.registry.state import KEEP_NEWEST, ROLLBACK_DEPTH, Canary, retire_versions

if TYPE_CHECKING:
    from pathlib import Path

T0_MS = 1_750_000_000_000
MODEL = "frame-classifier"
ROUTING_KEY = b"k" * 32
BLOB = bytes(range(256)) * 40


def _manifest(version: int = 1, data: bytes = BLOB, model: str = MODEL) -> Manifest:
    return Manifest(
        model=model,
        version=version,
        variant="tiny",
        sha256=sha256_hex(data),
        size_bytes=len(data),
        input_dtype="uint8",
        input_shape=(32, 32),
        metrics={"accuracy": 0.9375},
        lineage={"parent_version": None, "windows": [[T0_MS, T0_MS + 60_000]], "samples": 1797},
        created_at_ms=T0_MS,
    )


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(scope="module")
def trusted(key: SigningKey) -> TrustedKeys:
    return TrustedKeys().with_key(key.public_raw)


def _state(key: SigningKey, versions: int) -> ModelState:
    state = ModelState(MODEL)
    for v in range(1, versions + 1):
        state = publish(state, key.sign(_manifest(v, BLOB + bytes([v]))), now_ms=T0_MS + v)
    return state


# --- artifact store ----------------------------------------------------------------------------


def test_store_is_content_addressed_and_idempotent(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    sha = store.put(BLOB)
    assert sha == sha256_hex(BLOB)
    assert store.path(sha) == tmp_path / "sha256" / sha[:2] / sha
    assert store.put(BLOB) == sha
    assert store.has(sha)
    assert store.get(sha) == BLOB
    assert [p.name for p in store.path(sha).parent.iterdir()] == [sha]  # no temporary files left


def test_store_refuses_a_blob_with_one_byte_changed(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    sha = store.put(BLOB)
    tampered = bytearray(BLOB)
    tampered[100] ^= 0x01
    store.path(sha).write_bytes(bytes(tampered))
    with pytest.raises(ArtifactMismatch) as info:
        store.get(sha)
    assert info.value.reason == "artifact_mismatch"
    assert info.value.expected_sha256 == sha
    assert info.value.actual_sha256 == sha256_hex(bytes(tampered))
    store.put(BLOB)  # a put repairs it
    assert store.get(sha) == BLOB


def test_store_missing_and_malformed_names(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    with pytest.raises(ArtifactNotFound):
        store.get("0" * 64)
    assert not store.has("0" * 64)
    with pytest.raises(MalformedRegistryRecord):
        store.get("../../etc/passwd")


# --- manifests and signatures ------------------------------------------------------------------


def test_manifest_canonical_bytes_round_trip(key: SigningKey, trusted: TrustedKeys) -> None:
    signed = key.sign(_manifest())
    again = SignedManifest.from_dict(signed.to_dict())
    assert again == signed
    assert again.manifest.canonical_bytes() == signed.manifest.canonical_bytes()
    assert verify(again, trusted) == signed.manifest
    assert signed.manifest.signer_key_id == key.key_id == signed.key_id
    assert key.key_id.startswith("ed25519:")


def test_load_verified_returns_the_bytes(tmp_path: Path, key: SigningKey, trusted: TrustedKeys) -> None:
    store = LocalArtifactStore(tmp_path)
    store.put(BLOB)
    assert load_verified(store, key.sign(_manifest()), trusted) == BLOB


def test_tampered_artifact_is_refused(tmp_path: Path, key: SigningKey, trusted: TrustedKeys) -> None:
    store = LocalArtifactStore(tmp_path)
    sha = store.put(BLOB)
    data = bytearray(BLOB)
    data[-1] ^= 0xFF
    store.path(sha).write_bytes(bytes(data))
    with pytest.raises(ArtifactMismatch):
        load_verified(store, key.sign(_manifest()), trusted)


class _LyingStore:
    """An object store that does not check what it returns."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def put(self, data: bytes) -> str:
        return sha256_hex(data)

    def get(self, sha256: str) -> bytes:
        return self.data

    def has(self, sha256: str) -> bool:
        return True


def test_load_verified_checks_bytes_whatever_the_store(key: SigningKey, trusted: TrustedKeys) -> None:
    data = bytearray(BLOB)
    data[0] ^= 1
    with pytest.raises(ArtifactMismatch):
        load_verified(_LyingStore(bytes(data)), key.sign(_manifest()), trusted)


def test_unknown_signer_is_refused(tmp_path: Path, trusted: TrustedKeys) -> None:
    store = LocalArtifactStore(tmp_path)
    store.put(BLOB)
    stranger = SigningKey.generate()
    signed = stranger.sign(_manifest())
    with pytest.raises(UntrustedSigner) as info:
        load_verified(store, signed, trusted)
    assert info.value.reason == "untrusted_signer"
    assert info.value.key_id == stranger.key_id


def test_revoked_key_is_refused(key: SigningKey, trusted: TrustedKeys) -> None:
    with pytest.raises(UntrustedSigner):
        verify(key.sign(_manifest()), trusted.without(key.key_id))


@pytest.mark.parametrize(
    "change",
    [
        {"version": 2},
        {"sha256": "0" * 64},
        {"size_bytes": 1},
        {"metrics": {"accuracy": 0.99}},
        {"lineage": {"samples": 1}},
        {"input_shape": (8, 8)},
        {"created_at_ms": T0_MS + 1},
    ],
)
def test_field_changed_after_signing_is_refused(
    key: SigningKey, trusted: TrustedKeys, change: dict[str, object]
) -> None:
    signed = key.sign(_manifest())
    forged = dataclasses.replace(signed, manifest=dataclasses.replace(signed.manifest, **change))  # type: ignore[arg-type]
    with pytest.raises(BadSignature) as info:
        verify(forged, trusted)
    assert info.value.reason == "bad_signature"


def test_signature_under_a_claimed_trusted_key_id_is_refused(key: SigningKey, trusted: TrustedKeys) -> None:
    """A stranger's signature relabelled with the trusted key id."""
    stranger = SigningKey.generate().sign(_manifest())
    relabelled = SignedManifest(
        dataclasses.replace(stranger.manifest, signer_key_id=key.key_id), stranger.signature, key.key_id
    )
    with pytest.raises(BadSignature):
        verify(relabelled, trusted)
    mixed = dataclasses.replace(key.sign(_manifest()), key_id=key.key_id)
    mixed = dataclasses.replace(
        mixed, manifest=dataclasses.replace(mixed.manifest, signer_key_id="ed25519:x")
    )
    with pytest.raises(BadSignature):
        verify(mixed, trusted)


def test_errors_are_edgestream_errors_with_reasons() -> None:
    for cls in (ArtifactMismatch, UntrustedSigner, BadSignature, InvalidTransition, PinNotAllowed):
        assert issubclass(cls, EdgestreamError)
    assert PinNotAllowed(MODEL, 3).reason == "pin_not_allowed"
    assert isinstance(PinNotAllowed(MODEL, 3), UnknownModel)
    assert "may not be pinned" in str(PinNotAllowed(MODEL, 3))


def test_keys_on_disk(tmp_path: Path, key: SigningKey) -> None:
    path = tmp_path / "signing-key.pem"
    key.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert SigningKey.load(path).key_id == key.key_id
    with pytest.raises(ConfigError, match="overwrite"):
        key.save(path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="0600"):
        SigningKey.load(path)
    trusted_path = tmp_path / "trusted.json"
    TrustedKeys().with_key(key.public_raw).save(trusted_path)
    loaded = TrustedKeys.load(trusted_path)
    assert key.key_id in loaded
    with pytest.raises(ConfigError, match="no trusted keys"):
        TrustedKeys.load(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="does not match"):
        TrustedKeys({"ed25519:0000000000000000": key.public_raw})


# --- state transitions -------------------------------------------------------------------------


def test_first_publish_is_stable_later_ones_candidates(key: SigningKey) -> None:
    state = _state(key, 2)
    assert state.stable == 1
    assert state.latest == 2
    assert state.canary is None
    assert state.revision == 2
    assert [e.action for e in state.history] == ["publish", "publish"]


def test_publish_rejects_wrong_version_and_model(key: SigningKey) -> None:
    state = _state(key, 1)
    with pytest.raises(InvalidTransition, match="next version is 2"):
        publish(state, key.sign(_manifest(3)), now_ms=T0_MS)
    with pytest.raises(InvalidTransition, match="model"):
        publish(state, key.sign(_manifest(2, model="embedding-scorer")), now_ms=T0_MS)


def test_canary_stages_to_stable(key: SigningKey) -> None:
    state = start_canary(_state(key, 2), 2, now_ms=T0_MS + 10, reason="retrained")
    assert state.canary == Canary(2, 0.05, (0.05, 0.25, 1.0), T0_MS + 10)
    assert state.canary.stage == 1
    state = advance(state, now_ms=T0_MS + 20)
    assert state.canary is not None
    assert (state.canary.fraction, state.canary.stage) == (0.25, 2)
    state = advance(state, now_ms=T0_MS + 30)
    assert state.canary is None
    assert state.stable == 2
    promote = state.history[-1]
    assert (promote.action, promote.version, promote.from_version, promote.fraction) == ("promote", 2, 1, 1.0)
    with pytest.raises(InvalidTransition, match="no canary"):
        advance(state, now_ms=T0_MS)


def test_canary_with_a_chosen_fraction(key: SigningKey) -> None:
    state = start_canary(_state(key, 2), 2, fraction=0.1, now_ms=T0_MS)
    assert state.canary is not None
    assert state.canary.stages == (0.1, 0.25, 1.0)


@pytest.mark.parametrize(
    ("version", "kwargs", "message"),
    [
        (1, {}, "already stable"),
        (9, {}, "not published"),
        (2, {"fraction": 1.0}, r"in \(0, 1\)"),
        (2, {"stages": (0.5, 0.2, 1.0)}, "increase"),
        (2, {"stages": (0.5,)}, "end at 1.0"),
    ],
)
def test_invalid_canary_starts(
    key: SigningKey, version: int, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidTransition, match=message):
        start_canary(_state(key, 2), version, now_ms=T0_MS, **kwargs)  # type: ignore[arg-type]


def test_one_canary_at_a_time(key: SigningKey) -> None:
    state = start_canary(_state(key, 3), 2, now_ms=T0_MS)
    with pytest.raises(InvalidTransition, match="already in canary"):
        start_canary(state, 3, now_ms=T0_MS)


def test_rollback_of_canary_then_of_stable(key: SigningKey) -> None:
    state = _state(key, 3)
    state = start_canary(state, 2, now_ms=T0_MS)
    state = rollback(state, now_ms=T0_MS + 1, reason="accuracy regressed")
    assert (state.canary, state.stable) == (None, 1)
    assert state.history[-1].reason == "accuracy regressed"
    for version in (2, 3):
        state = start_canary(state, version, now_ms=T0_MS)
        state = advance(advance(state, now_ms=T0_MS), now_ms=T0_MS)
    assert state.stable == 3
    state = rollback(state, now_ms=T0_MS + 2, reason="latency")
    assert state.stable == 2
    assert (state.history[-1].version, state.history[-1].from_version) == (2, 3)
    state = rollback(state, now_ms=T0_MS + 3, reason="again")
    assert state.stable == 1
    with pytest.raises(InvalidTransition, match="nothing to roll back"):
        rollback(state, now_ms=T0_MS, reason="x")


def test_pins(key: SigningKey) -> None:
    state = _state(key, 3)
    state = allow_pin(state, 2, now_ms=T0_MS)
    assert state.allowed_pins() == {1, 2}
    with pytest.raises(InvalidTransition, match="already pinnable"):
        allow_pin(state, 2, now_ms=T0_MS)
    with pytest.raises(InvalidTransition, match="not published"):
        allow_pin(state, 7, now_ms=T0_MS)
    assert choose_version(state, "dev-1", ROUTING_KEY, pinned=2) == 2
    assert choose_version(state, "dev-1", ROUTING_KEY, pinned=1) == 1  # stable: always pinnable
    with pytest.raises(PinNotAllowed):
        choose_version(state, "dev-1", ROUTING_KEY, pinned=3)
    state = disallow_pin(state, 2, now_ms=T0_MS)
    with pytest.raises(PinNotAllowed):
        choose_version(state, "dev-1", ROUTING_KEY, pinned=2)
    with pytest.raises(InvalidTransition, match="not pinnable"):
        disallow_pin(state, 2, now_ms=T0_MS)


def test_state_bytes_round_trip(key: SigningKey, trusted: TrustedKeys) -> None:
    state = allow_pin(start_canary(_state(key, 3), 3, now_ms=T0_MS, reason="r"), 2, now_ms=T0_MS)
    value = state.to_bytes()
    again = ModelState.from_bytes(value)
    assert again == state
    assert again.to_bytes() == value
    for signed in again.versions:
        verify(signed, trusted)  # signatures survive the round trip


@pytest.mark.parametrize(
    "value",
    [b"not json", b"{}", b'{"format": 2}', b"[]"],
)
def test_malformed_state_is_refused(value: bytes) -> None:
    with pytest.raises(MalformedRegistryRecord):
        ModelState.from_bytes(value)


def test_inconsistent_state_is_refused(key: SigningKey) -> None:
    data = _state(key, 1).to_dict()
    data["stable"] = 5
    with pytest.raises(MalformedRegistryRecord, match="unpublished"):
        ModelState.from_dict(data)


def test_history_is_bounded(key: SigningKey) -> None:
    state = _state(key, 2)
    for _ in range(150):
        state = disallow_pin(allow_pin(state, 2, now_ms=T0_MS), 2, now_ms=T0_MS)
    assert len(state.history) == 200
    assert state.revision == 302


def _promote(state: ModelState, version: int) -> ModelState:
    state = start_canary(state, version, now_ms=T0_MS, stages=(0.5, 1.0))
    return advance(state, now_ms=T0_MS)


def _published(key: SigningKey, state: ModelState, variant: str = "tiny") -> ModelState:
    version = state.latest + 1
    manifest = dataclasses.replace(_manifest(version, BLOB + version.to_bytes(2, "big")), variant=variant)
    return publish(state, key.sign(manifest), now_ms=T0_MS + version)


def test_a_state_keeps_the_versions_that_may_matter_and_retires_the_rest(key: SigningKey) -> None:
    state = _state(key, 1)
    for version in range(2, 61):
        state = _published(key, state, "medium" if version in (3, 8) else "tiny")
        if version in (5, 10, 20, 30, 40):
            state = _promote(state, version)
        if version == 7:
            state = allow_pin(state, 7, now_ms=T0_MS)
        if version == 45:
            state = start_canary(state, 45, now_ms=T0_MS)
    assert (state.stable, state.canary and state.canary.version, state.latest) == (40, 45, 60)
    assert state.rollback_chain() == (30, 20, 10, 5)
    kept = {signed.version for signed in state.versions}
    # newest ten, stable, canary, pinnable, what rollbacks of stable restore, the newest medium one
    assert kept == {*range(61 - KEEP_NEWEST, 61), 40, 45, 7, 30, 20, 10, 5, 8}
    assert state.retired == 60 - len(kept)
    assert len(state.to_bytes()) < 60 * 1024
    assert ModelState.from_bytes(state.to_bytes()) == state  # consistent: all it refers to is kept

    state = rollback(state, now_ms=T0_MS, reason="the canary regressed")
    assert 45 not in {signed.version for signed in state.versions}  # nothing refers to it any more
    for restored in (30, 20, 10, 5)[:ROLLBACK_DEPTH]:
        state = rollback(state, now_ms=T0_MS, reason="stable regressed")
        assert state.stable == restored
        assert ModelState.from_bytes(state.to_bytes()) == state
    with pytest.raises(InvalidTransition, match="v1, which v5 replaced, is retired"):
        rollback(state, now_ms=T0_MS, reason="once more")
    with pytest.raises(InvalidTransition, match="version 2 is retired"):
        start_canary(state, 2, now_ms=T0_MS)
    with pytest.raises(InvalidTransition, match="version 3 is retired"):
        allow_pin(state, 3, now_ms=T0_MS)
    with pytest.raises(InvalidTransition, match="version 61 is not published"):
        allow_pin(state, 61, now_ms=T0_MS)


def test_a_state_written_with_every_version_is_trimmed_at_its_next_transition(key: SigningKey) -> None:
    everything = _state(key, 40)  # as published before versions were retired
    everything = dataclasses.replace(everything, versions=_state_versions(key, 40))
    assert len(everything.versions) == 40
    kept = [1, *range(41 - KEEP_NEWEST, 41)]  # stable, and the newest
    assert [signed.version for signed in retire_versions(everything).versions] == kept
    state = allow_pin(everything, 12, now_ms=T0_MS)
    assert [signed.version for signed in state.versions] == [1, 12, *range(41 - KEEP_NEWEST, 41)]


def _state_versions(key: SigningKey, versions: int) -> tuple[SignedManifest, ...]:
    return tuple(key.sign(_manifest(v, BLOB + bytes([v]))) for v in range(1, versions + 1))


actions = st.lists(
    st.sampled_from(["publish", "publish_medium", "canary", "advance", "rollback", "pin", "unpin"]),
    max_size=120,
)


@settings(max_examples=40, deadline=None)
@given(steps=actions, picks=st.lists(st.integers(min_value=0, max_value=1_000), min_size=120, max_size=120))
def test_any_rollout_leaves_a_consistent_bounded_state(
    key: SigningKey, steps: list[str], picks: list[int]
) -> None:
    state = _state(key, 1)
    for step, pick in zip(steps, picks, strict=False):
        published = [signed.version for signed in state.versions]
        version = published[pick % len(published)]
        try:
            if step.startswith("publish"):
                state = _published(key, state, "medium" if step == "publish_medium" else "tiny")
            elif step == "canary":
                state = start_canary(state, version, now_ms=T0_MS)
            elif step == "advance":
                state = advance(state, now_ms=T0_MS)
            elif step == "rollback":
                state = rollback(state, now_ms=T0_MS, reason="r")
            elif step == "pin":
                state = allow_pin(state, version, now_ms=T0_MS)
            else:
                state = disallow_pin(state, version, now_ms=T0_MS)
        except InvalidTransition:
            continue
        assert ModelState.from_bytes(state.to_bytes()) == state
        referenced = state.served() | state.pinnable | set(state.rollback_chain())
        assert len(state.versions) <= KEEP_NEWEST + len(referenced) + 2  # + the newest of each variant
        assert state.latest == max(signed.version for signed in state.versions)
        carried = {signed.version for signed in state.versions}
        assert state.retired == len(set(range(1, state.latest + 1)) - carried)


# --- routing -----------------------------------------------------------------------------------


def test_routing_without_canary_or_stable(key: SigningKey) -> None:
    assert choose_version(_state(key, 2), "dev-1", ROUTING_KEY) == 1
    with pytest.raises(UnknownModel):
        choose_version(ModelState(MODEL), "dev-1", ROUTING_KEY)


def _canary_state(key: SigningKey, fraction: float) -> ModelState:
    return start_canary(_base_state(key), 2, fraction=fraction, now_ms=T0_MS)


_BASE: dict[str, ModelState] = {}


def _base_state(key: SigningKey) -> ModelState:
    if key.key_id not in _BASE:
        _BASE[key.key_id] = _state(key, 2)
    return _BASE[key.key_id]


fractions = st.floats(min_value=0.001, max_value=0.999, allow_nan=False)
device_ids = st.text(min_size=1, max_size=40)


@given(fraction=fractions, device_id=device_ids)
def test_one_device_always_gets_one_version(key: SigningKey, fraction: float, device_id: str) -> None:
    state = _canary_state(key, fraction)
    first = choose_version(state, device_id, ROUTING_KEY)
    assert first in (1, 2)
    again = ModelState.from_bytes(state.to_bytes())
    assert all(choose_version(again, device_id, ROUTING_KEY) == first for _ in range(3))


@settings(max_examples=20, deadline=None)
@given(fraction=st.floats(min_value=0.01, max_value=0.99), salt=st.binary(min_size=16, max_size=32))
def test_canary_share_is_close_to_the_fraction(key: SigningKey, fraction: float, salt: bytes) -> None:
    state = _canary_state(key, fraction)
    n = 20_000
    share = sum(choose_version(state, f"device-{i}", salt) == 2 for i in range(n)) / n
    assert abs(share - fraction) < 0.02  # > 5 standard deviations at n = 20000


@given(low=fractions, high=fractions, device_id=device_ids)
def test_raising_the_fraction_never_leaves_the_canary(
    key: SigningKey, low: float, high: float, device_id: str
) -> None:
    low, high = sorted((low, high))
    if choose_version(_canary_state(key, low), device_id, ROUTING_KEY) == 2:
        assert choose_version(_canary_state(key, high), device_id, ROUTING_KEY) == 2


def test_advancing_keeps_canary_devices(key: SigningKey) -> None:
    state = start_canary(_base_state(key), 2, now_ms=T0_MS)
    devices = [f"d{i}" for i in range(2000)]
    before = {d for d in devices if choose_version(state, d, ROUTING_KEY) == 2}
    after = {d for d in devices if choose_version(advance(state, now_ms=T0_MS), d, ROUTING_KEY) == 2}
    assert before
    assert before < after


def test_worker_reports_round_trip_and_refuse_anything_else() -> None:
    from edgestream.pipeline.errors import UndecodableRecord
    from edgestream.pipeline.registry.reports import WorkerReport, report_of

    report = report_of("eu-west/n1", "eu-west", {"m": 7, "local": None}, {"m": (2, 3), "local": (1,)})
    again = WorkerReport.from_bytes(report.to_bytes())
    assert again == report
    assert again.revisions == {"m": 7, "local": None}
    assert again.served == {"m": (2, 3), "local": (1,)}
    for bad in (
        b"",
        b"[]",
        b'{"v": 2}',
        b'{"v": 1, "node": "n"}',
        b"\xff",
        b'{"v":1,"node":"n","region":"r","at_ms":"soon","revisions":{},"served":{}}',
    ):
        with pytest.raises(UndecodableRecord):
            WorkerReport.from_bytes(bad)


def test_bad_shape_counts_against_a_version_only_when_the_input_specs_differ(key: SigningKey) -> None:
    """A malformed input fails on either version when both take the same spec: it says nothing about
    the one it was routed to. A candidate whose spec changed is to blame for what no longer fits."""
    from dataclasses import replace

    from edgestream.pipeline.learning.rollout import VersionStats, error_reasons

    stable = key.sign(_manifest(1))
    same = key.sign(_manifest(2))
    wider = key.sign(replace(_manifest(2), input_shape=(31,)))
    assert error_reasons(stable, same) == frozenset({"infer_failed"})
    assert error_reasons(stable, wider) == frozenset({"infer_failed", "bad_shape"})
    dead = {"bad_shape": 3, "infer_failed": 1, "bad_tag": 9}
    assert VersionStats(2, 96, dead, error_reasons=error_reasons(stable, same)).model_errors == 1
    assert VersionStats(2, 96, dead, error_reasons=error_reasons(stable, wider)).model_errors == 4
