"""What the peer does with each record, as a user would write it: open the envelope with edgestream's
contract code and the region's keys, run onnxruntime on that one input, build the result record and
seal it to the device as the contract requires of every reply (``pipeline/contract/reply.py``).

No batching, no replay or rate checks, no dead letters or audit: a record that does not open, or whose
model fails, is counted by its reason and dropped (no record stops the app).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgestream.pipeline.contract.codec import decode_tensor
from edgestream.pipeline.contract.envelope import decode_envelope, open_envelope
from edgestream.pipeline.contract.records import ResultRecord
from edgestream.pipeline.contract.reply import ReplyHeader
from edgestream.pipeline.errors import EdgestreamError, UnknownModel
from edgestream.pipeline.models import ModelStore
from edgestream.pipeline.security.keyring import KeyRing
from edgestream.workers.edge.sealing import ReplySealer
from edgestream.workers.local.fleet_settings import MODEL_FOR_KIND

PEER_NODE = "peer-quix"
"""The ``node`` of the peer's result records."""
INTERNAL = "internal"
"""The reason counted for a failure that is not a contract error."""


@dataclass(frozen=True, slots=True)
class PeerModel:
    """One model the peer runs: a plain onnxruntime session and the version it answers as."""

    session: ort.InferenceSession
    version: int


def load_models(home: Path, size: str, intra_op_threads: int) -> dict[str, PeerModel]:
    """The worker's models (``home/models``, built there if missing) as plain onnxruntime sessions with
    the worker's thread settings, by model name."""
    store = ModelStore(home / "models")
    models = {}
    for name in MODEL_FOR_KIND.values():
        artifact = store.get(name, size)
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(
            str(artifact.path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        models[name] = PeerModel(session, artifact.version)
    return models


class Answerer:
    """Turns a sealed envelope into its sealed reply's bytes, or None (counted in ``refused``)."""

    def __init__(
        self,
        region: str,
        keyring: KeyRing,
        models: Mapping[str, PeerModel],
        *,
        max_envelope_bytes: int,
        max_body_bytes: int,
    ) -> None:
        self._region = region
        self._keyring = keyring
        self._models = dict(models)
        self._max_envelope_bytes = max_envelope_bytes
        self._max_body_bytes = max_body_bytes
        self._sealer = ReplySealer(region)
        self.answered = 0
        """Result records built."""
        self.refused: Counter[str] = Counter()
        """Records dropped, by reason."""
        self.infer_s = 0.0
        """Seconds spent in onnxruntime."""

    def answer(self, raw: bytes | None) -> bytes | None:
        """The sealed reply for ``raw``, or None when it cannot be answered."""
        try:
            result = self._answer(raw or b"")
        except EdgestreamError as err:
            self.refused[err.reason] += 1
            return None
        except Exception:  # a user's app would log it; the bench counts it
            self.refused[INTERNAL] += 1
            return None
        self.answered += 1
        return result

    def _answer(self, raw: bytes) -> bytes:
        envelope = decode_envelope(raw, max_envelope_bytes=self._max_envelope_bytes)
        now_ms = time.time() * 1000.0
        key = self._keyring.device_key(self._region, envelope.device_id, envelope.key_id, now_ms)
        body = open_envelope(envelope, key, max_body_bytes=self._max_body_bytes)
        model = self._models.get(envelope.model)
        if model is None:
            raise UnknownModel(envelope.model, envelope.model_version)
        started_s = time.perf_counter()
        labels, probs = model.session.run(["label", "probs"], {"input": decode_tensor(body)[np.newaxis]})
        infer_s = time.perf_counter() - started_s
        self.infer_s += infer_s
        done_ms = time.time() * 1000.0
        result = ResultRecord(
            request_id=envelope.request_id,
            device_id=envelope.device_id,
            model=envelope.model,
            model_version=model.version,
            label=int(labels[0]),
            scores=tuple(float(s) for s in probs[0]),
            queue_ms=0.0,
            infer_ms=infer_s * 1000.0,
            total_ms=done_ms - envelope.capture_time_ms,
            batch_size=1,
            node=PEER_NODE,
            region=self._region,
            produced_at_ms=int(done_ms),
        ).to_bytes()
        header = ReplyHeader(envelope.request_id, envelope.key_id, envelope.model, model.version)
        return self._sealer.seal(result, key, header)
