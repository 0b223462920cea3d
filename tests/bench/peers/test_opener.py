"""The peer's per-record work: a sealed envelope in, the result record the worker would give out,
sealed to its device as the worker seals it; a record that cannot be answered is counted by its reason
and never raises."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from bench.peers.opener import PEER_NODE, Answerer, PeerModel, load_models
from edgestream.pipeline.contract.codec import encode_tensor
from edgestream.pipeline.contract.envelope import seal
from edgestream.pipeline.contract.reply import open_reply
from edgestream.pipeline.models import load_dataset, spec
from edgestream.pipeline.security import keyfile
from edgestream.pipeline.security.keyring import KeyRing
from edgestream.workers.local.fleet_settings import MODEL_FOR_KIND, Kind

REGION = "peer-test"
DEVICE = "dev-1"
LIMITS = {"max_envelope_bytes": 1 << 20, "max_body_bytes": 4 << 20}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, PeerModel]:
    return load_models(tmp_path_factory.mktemp("peer-home"), "tiny", 1)


@pytest.fixture
def keyring(tmp_path: Path) -> KeyRing:
    return keyfile.create(tmp_path / "keys.json", [REGION])


def _sealed(keyring: KeyRing, kind: Kind, *, model: str | None = None) -> tuple[bytes, npt.NDArray[Any]]:
    x = load_dataset(kind).X_test[0]
    key_id = keyring.current_key_id(REGION)
    raw = seal(
        encode_tensor(x, spec(MODEL_FOR_KIND[kind]).input_dtype),
        device_key=keyring.device_key(REGION, DEVICE, key_id),
        device_id=DEVICE,
        key_id=key_id,
        kind=kind,
        model=model or MODEL_FOR_KIND[kind],
    )
    return raw, x


@pytest.mark.parametrize("kind", ["embedding", "frame"])
def test_an_envelope_is_answered_as_its_model_answers_it(
    models: dict[str, PeerModel], keyring: KeyRing, kind: Kind
) -> None:
    answerer = Answerer(REGION, keyring, models, **LIMITS)
    raw, x = _sealed(keyring, kind)
    out = answerer.answer(raw)
    assert out is not None
    result = open_reply(out, keyring.device_key(REGION, DEVICE, keyring.current_key_id(REGION)), REGION)
    model = models[MODEL_FOR_KIND[kind]]
    dtype = spec(MODEL_FOR_KIND[kind]).input_dtype
    labels, probs = model.session.run(["label", "probs"], {"input": x.astype(dtype)[np.newaxis]})
    assert (result.device_id, result.model, result.region, result.node) == (
        DEVICE,
        MODEL_FOR_KIND[kind],
        REGION,
        PEER_NODE,
    )
    assert result.label == int(labels[0])
    assert result.scores == pytest.approx(tuple(float(p) for p in probs[0]))
    assert (result.batch_size, answerer.answered, dict(answerer.refused)) == (1, 1, {})


def test_what_cannot_be_answered_is_counted_by_reason_and_dropped(
    models: dict[str, PeerModel], keyring: KeyRing, tmp_path: Path
) -> None:
    answerer = Answerer(REGION, keyring, models, **LIMITS)
    raw, _ = _sealed(keyring, "embedding")
    tampered = raw[:-1] + bytes([raw[-1] ^ 1])
    unknown, _ = _sealed(keyring, "embedding", model="no-such-model")
    other_keys = keyfile.create(tmp_path / "other.json", [REGION])
    for record in (tampered, unknown, b"\x00garbage", None):
        assert answerer.answer(record) is None
    assert Answerer(REGION, other_keys, models, **LIMITS).answer(raw) is None  # another master key
    assert answerer.answered == 0
    assert dict(answerer.refused) == {"bad_tag": 1, "unknown_model": 1, "undecodable": 2}
