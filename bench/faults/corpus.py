"""A hostile corpus: good envelopes from many devices, mixed with broken ones that each know their fate.

Every record carries what the edge worker must do with it: ``ok`` (exactly one result and one audit
record) or the reason code of its one dead letter. The bad ones cover each way a record can be wrong
on the wire (garbage, truncation, size, zstd bombs, versions, field types, every authenticated field
tampered, the ciphertext tampered, unknown key ids, replays, stale and future capture times, wrong
shapes and dtypes, unknown models); ``CATEGORIES`` lists them with their expected reason.

Where a field change is caught before decryption the expected reason is that earlier check's (the
worker resolves the model before it derives the key): changing ``kind`` alone is ``bad_shape``,
changing ``kind`` and ``model`` together to the other served family gets as far as AES-GCM and is
``bad_tag``. Good records carry ``{"test_id": n}`` in their authenticated body attributes.

Draws are seeded (``random.Random``); nonces and request ids stay truly random, as on a device.
Records are sealed when drawn, so capture times are "now" for a stream sent as it is drawn.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import random
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, Literal

import msgpack
import numpy as np
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench.faults.records import CATEGORIES, OK, CorpusRecord
from bench.faults.wire import envelope_fields, flip_bit, pack_fields, pack_with_duplicate, zstd_bombs
from edgestream.pipeline.contract.codec import Compression, TensorDtype, encode_tensor, pack_body
from edgestream.pipeline.contract.envelope import (
    CONTRACT_VERSION,
    NONCE_BYTES,
    Envelope,
    Kind,
    aad,
    encode_envelope,
    new_request_id,
    seal,
)
from edgestream.pipeline.models import load_dataset, spec
from edgestream.pipeline.security.keyring import KeyRing
from edgestream.topics.catalogue import KINDS
from edgestream.workers.local.fleet_settings import MODEL_FOR_KIND

UNKNOWN_KEY_ID: Final = 999
"""A key id no region's ring holds."""
_OTHER_KIND: Final[Mapping[Kind, Kind]] = {"embedding": "frame", "frame": "embedding"}
_REQUIRED_FIELDS: Final = ("v", "rid", "dev", "ts", "kind", "model", "kid", "comp", "nonce", "ct")
_BAD_FIELD_TYPES: Final[tuple[tuple[str, object], ...]] = (
    ("v", "1"),
    ("rid", b"\x01" * 15),
    ("rid", "0123456789abcdef"),
    ("dev", ""),
    ("dev", "d" * 129),
    ("ts", -1),
    ("ts", 1.5),
    ("kind", "audio"),
    ("model", ""),
    ("mver", -1),
    ("mver", 2**32),
    ("kid", "1"),
    ("kid", -1),
    ("comp", "gzip"),
    ("nonce", b"\x00" * (NONCE_BYTES - 1)),
    ("ct", b"\x00" * 15),
)


class Corpus:
    """Draws good and bad records for one region, sealed with that region's keys."""

    def __init__(
        self,
        region: str,
        keyring: KeyRing,
        *,
        served_versions: Mapping[str, int],
        seed: int,
        devices: int,
        max_envelope_bytes: int,
        max_body_bytes: int,
        max_age_ms: int,
        first_test_id: int = 0,
    ) -> None:
        if len(keyring.key_ids(region)) < 2:
            raise ValueError("the corpus needs two key ids in the region's ring (key rotation)")
        self.region = region
        self.seed = seed
        self._keyring = keyring
        self._versions = dict(served_versions)
        self._rng = random.Random(seed)
        self._ids = itertools.count(first_test_id)
        self._devices = [f"dev-{seed}-{i:04d}" for i in range(devices)]
        self._data = {kind: load_dataset(kind).X_test for kind in KINDS}
        self._max_envelope_bytes = max_envelope_bytes
        self._max_body_bytes = max_body_bytes
        self._max_age_ms = max_age_ms
        self._recent_good: deque[CorpusRecord] = deque(maxlen=256)
        self._bomb_declared, self._bomb_streamed = zstd_bombs(2 * max_body_bytes)
        self._categories: dict[str, tuple[str, Callable[[int], CorpusRecord]]] = {
            name: (expect, getattr(self, f"_bad_{name}")) for name, expect in CATEGORIES.items()
        }
        self._coverage = itertools.cycle(list(CATEGORIES))
        self._covered = 0

    # -- drawing ------------------------------------------------------------------------------------

    def good(self, *, device: str | None = None, kind: Kind | None = None) -> CorpusRecord:
        """A good record from ``device`` (default: a random one of the corpus's), of ``kind`` (default:
        either), sealed under either key id, sometimes pinned to the served version."""
        test_id = next(self._ids)
        drawn: Kind = self._rng.choice(KINDS) if kind is None else kind
        device = device or self._rng.choice(self._devices)
        model = MODEL_FOR_KIND[drawn]
        pinned = self._versions[model] if self._rng.random() < 0.2 else None
        key_id = self._rng.choice(self._keyring.key_ids(self.region))
        value, rid = self._seal(device, drawn, test_id, key_id=key_id, model_version=pinned)
        record = CorpusRecord(test_id, drawn, device.encode(), value, OK, "good", rid)
        self._recent_good.append(record)
        return record

    def bad(self) -> CorpusRecord:
        """A bad record: every category in turn first, then categories at random."""
        if self._covered < len(CATEGORIES):
            name = next(self._coverage)
            self._covered += 1
        else:
            name = self._rng.choice(list(CATEGORIES))
        return self._categories[name][1](next(self._ids))

    def stream(self, good: int, bad: int, *, good_first: int = 20) -> Iterator[CorpusRecord]:
        """``good`` good and ``bad`` bad records, randomly interleaved after ``good_first`` good ones
        (so replays have originals). Drawn lazily: each is sealed as it is taken."""
        head = min(good_first, good)
        for _ in range(head):
            yield self.good()
        order = [True] * (good - head) + [False] * bad
        self._rng.shuffle(order)
        for is_good in order:
            yield self.good() if is_good else self.bad()

    # -- sealing ------------------------------------------------------------------------------------

    def _row(self, kind: Kind) -> np.ndarray[Any, Any]:
        data = self._data[kind]
        row: np.ndarray[Any, Any] = data[self._rng.randrange(len(data))]
        return row

    def _seal(
        self,
        device: str,
        kind: Kind,
        test_id: int,
        *,
        x: np.ndarray[Any, Any] | None = None,
        dtype: TensorDtype | None = None,
        key_id: int | None = None,
        claimed_key_id: int | None = None,
        model: str | None = None,
        model_version: int | None = None,
        capture_time_ms: int | None = None,
        compression: Literal["auto", "zstd", "none"] = "auto",
    ) -> tuple[bytes, bytes]:
        """Seal like a device; returns (envelope bytes, request id)."""
        name = MODEL_FOR_KIND[kind]
        key_id = self._keyring.current_key_id(self.region) if key_id is None else key_id
        body = encode_tensor(
            self._row(kind) if x is None else x,
            spec(name).input_dtype if dtype is None else dtype,
            attrs={"test_id": test_id},
        )
        rid = new_request_id()
        value = seal(
            body,
            device_key=self._keyring.device_key(self.region, device, key_id),
            device_id=device,
            key_id=key_id if claimed_key_id is None else claimed_key_id,
            kind=kind,
            model=model or name,
            model_version=model_version,
            capture_time_ms=capture_time_ms,
            request_id=rid,
            compression=compression,
        )
        return value, rid

    def _seal_plaintext(
        self, device: str, kind: Kind, plaintext: bytes, compression: Compression
    ) -> tuple[bytes, bytes]:
        """Encrypt ``plaintext`` as an envelope's body as it stands (bombs, broken bodies)."""
        key_id = self._keyring.current_key_id(self.region)
        header = Envelope(
            version=CONTRACT_VERSION,
            request_id=new_request_id(),
            device_id=device,
            capture_time_ms=time.time_ns() // 1_000_000,
            kind=kind,
            model=MODEL_FOR_KIND[kind],
            model_version=None,
            key_id=key_id,
            compression=compression,
            nonce=os.urandom(NONCE_BYTES),
            ciphertext=b"",
        )
        device_key = self._keyring.device_key(self.region, device, key_id)
        ciphertext = AESGCM(device_key).encrypt(header.nonce, plaintext, aad(header))
        return encode_envelope(dataclasses.replace(header, ciphertext=ciphertext)), header.request_id

    def _base(self, test_id: int, **kw: Any) -> tuple[Kind, str, bytes, bytes]:
        """(kind, device, sealed bytes, request id) of a good record to break."""
        kind: Kind = kw.pop("kind", None) or self._rng.choice(KINDS)
        device = self._rng.choice(self._devices)
        value, rid = self._seal(device, kind, test_id, **kw)
        return kind, device, value, rid

    def _make(
        self, test_id: int, category: str, kind: Kind, device: str, value: bytes, rid: bytes | None
    ) -> CorpusRecord:
        return CorpusRecord(test_id, kind, device.encode(), value, CATEGORIES[category], category, rid)

    def _edit(
        self, test_id: int, category: str, edit: Callable[[dict[str, Any]], None], **kw: Any
    ) -> CorpusRecord:
        """A good record with its envelope map edited in place; the request id is the edited one's."""
        kind, device, value, _ = self._base(test_id, **kw)
        fields = envelope_fields(value)
        edit(fields)
        rid = fields.get("rid")
        return self._make(
            test_id, category, kind, device, pack_fields(fields), rid if isinstance(rid, bytes) else None
        )

    # -- decode stage -------------------------------------------------------------------------------

    def _bad_random_bytes(self, test_id: int) -> CorpusRecord:
        while True:
            value = self._rng.randbytes(self._rng.randrange(1, 2048))
            try:
                decoded = msgpack.unpackb(value, raw=False, strict_map_key=True)
            except (ValueError, TypeError, msgpack.UnpackException):
                break
            if type(decoded) is not dict:  # a map by chance would not be "random bytes" any more
                break
        return self._make(
            test_id, "random_bytes", self._rng.choice(KINDS), self._rng.choice(self._devices), value, None
        )

    def _bad_empty(self, test_id: int) -> CorpusRecord:
        return self._make(
            test_id, "empty", self._rng.choice(KINDS), self._rng.choice(self._devices), b"", None
        )

    def _bad_not_a_map(self, test_id: int) -> CorpusRecord:
        value = msgpack.packb(
            self._rng.choice([[1, 2, 3], 42, "envelope", b"\x00" * 32, None, [{"v": 1}]]), use_bin_type=True
        )
        return self._make(
            test_id, "not_a_map", self._rng.choice(KINDS), self._rng.choice(self._devices), value, None
        )

    def _bad_missing_field(self, test_id: int) -> CorpusRecord:
        gone = self._rng.choice(_REQUIRED_FIELDS)
        return self._edit(test_id, "missing_field", lambda f: f.pop(gone))

    def _bad_unknown_field(self, test_id: int) -> CorpusRecord:
        return self._edit(test_id, "unknown_field", lambda f: f.update(extra=self._rng.randrange(100)))

    def _bad_duplicate_key(self, test_id: int) -> CorpusRecord:
        kind, device, value, rid = self._base(test_id)
        fields = envelope_fields(value)
        doubled = pack_with_duplicate(fields, self._rng.choice(list(fields)))
        return self._make(test_id, "duplicate_key", kind, device, doubled, rid)

    def _bad_bad_field_type(self, test_id: int) -> CorpusRecord:
        name, wrong = self._rng.choice(_BAD_FIELD_TYPES)
        return self._edit(test_id, "bad_field_type", lambda f: f.__setitem__(name, wrong))

    def _bad_truncated(self, test_id: int) -> CorpusRecord:
        kind, device, value, rid = self._base(test_id)
        return self._make(test_id, "truncated", kind, device, value[: self._rng.randrange(len(value))], rid)

    def _bad_bad_version(self, test_id: int) -> CorpusRecord:
        version = self._rng.choice([0, 2, 3, 17, 255, 65535])
        return self._edit(test_id, "bad_version", lambda f: f.__setitem__("v", version))

    def _bad_oversized_bytes(self, test_id: int) -> CorpusRecord:
        value = self._rng.randbytes(self._max_envelope_bytes + self._rng.randrange(1, 4096))
        return self._make(
            test_id, "oversized_bytes", self._rng.choice(KINDS), self._rng.choice(self._devices), value, None
        )

    def _bad_oversized_envelope(self, test_id: int) -> CorpusRecord:
        side = int(self._max_envelope_bytes**0.5) + 8
        noise = np.frombuffer(self._rng.randbytes(side * side), dtype=np.uint8).reshape(side, side)
        kind, device, value, rid = self._base(test_id, kind="frame", x=noise, compression="none")
        return self._make(test_id, "oversized_envelope", kind, device, value, rid)

    def _bad_bad_device_id(self, test_id: int) -> CorpusRecord:
        """A device id outside the normal form (docs/contract.md, "Device ids"): decomposed, so not NFC,
        or carrying a control character; refused at decode, before any key is derived."""
        broken = self._rng.choice(["cafe\u0301-{}", "dev\x00{}", "dev\u200b\x7f{}", "\u212b{}"])
        return self._edit(test_id, "bad_device_id", lambda f: f.__setitem__("dev", broken.format(test_id)))

    # -- decrypt stage ------------------------------------------------------------------------------

    def _tampered(
        self, test_id: int, category: str, edit: Callable[[dict[str, Any]], None], **kw: Any
    ) -> CorpusRecord:
        return self._edit(test_id, category, edit, **kw)

    def _bad_tampered_rid(self, test_id: int) -> CorpusRecord:
        return self._tampered(
            test_id, "tampered_rid", lambda f: f.__setitem__("rid", flip_bit(f["rid"], self._rng))
        )

    def _bad_tampered_dev(self, test_id: int) -> CorpusRecord:
        def edit(f: dict[str, Any]) -> None:
            f["dev"] = self._rng.choice([d for d in self._devices[:8] if d != f["dev"]])

        return self._tampered(test_id, "tampered_dev", edit)

    def _bad_tampered_ts(self, test_id: int) -> CorpusRecord:
        shift_ms = self._rng.choice([-1, 1]) * self._rng.randint(1, 1000)
        return self._tampered(test_id, "tampered_ts", lambda f: f.__setitem__("ts", f["ts"] + shift_ms))

    def _bad_tampered_kind_model(self, test_id: int) -> CorpusRecord:
        def edit(f: dict[str, Any]) -> None:
            f["kind"] = _OTHER_KIND[f["kind"]]
            f["model"] = MODEL_FOR_KIND[f["kind"]]
            f.pop("mver", None)

        return self._tampered(test_id, "tampered_kind_model", edit)

    def _bad_tampered_mver(self, test_id: int) -> CorpusRecord:
        def edit(f: dict[str, Any]) -> None:
            if "mver" in f:
                del f["mver"]
            else:
                f["mver"] = self._versions[f["model"]]

        pinned = self._rng.random() < 0.5
        kind: Kind = self._rng.choice(KINDS)
        version = self._versions[MODEL_FOR_KIND[kind]] if pinned else None
        return self._tampered(test_id, "tampered_mver", edit, kind=kind, model_version=version)

    def _bad_tampered_kid(self, test_id: int) -> CorpusRecord:
        ids = self._keyring.key_ids(self.region)

        def edit(f: dict[str, Any]) -> None:
            f["kid"] = self._rng.choice([k for k in ids if k != f["kid"]])

        return self._tampered(test_id, "tampered_kid", edit, key_id=self._rng.choice(ids))

    def _bad_tampered_comp(self, test_id: int) -> CorpusRecord:
        def edit(f: dict[str, Any]) -> None:
            f["comp"] = "none" if f["comp"] == "zstd" else "zstd"

        return self._tampered(test_id, "tampered_comp", edit)

    def _bad_tampered_nonce(self, test_id: int) -> CorpusRecord:
        return self._tampered(
            test_id, "tampered_nonce", lambda f: f.__setitem__("nonce", flip_bit(f["nonce"], self._rng))
        )

    def _bad_tampered_ciphertext(self, test_id: int) -> CorpusRecord:
        return self._tampered(
            test_id, "tampered_ciphertext", lambda f: f.__setitem__("ct", flip_bit(f["ct"], self._rng))
        )

    def _bad_truncated_ciphertext(self, test_id: int) -> CorpusRecord:
        def edit(f: dict[str, Any]) -> None:
            f["ct"] = f["ct"][: self._rng.randrange(16, len(f["ct"]))]

        return self._tampered(test_id, "truncated_ciphertext", edit)

    def _bad_tampered_kind(self, test_id: int) -> CorpusRecord:
        return self._tampered(
            test_id, "tampered_kind", lambda f: f.__setitem__("kind", _OTHER_KIND[f["kind"]])
        )

    def _bad_unknown_key_id(self, test_id: int) -> CorpusRecord:
        kind, device, value, rid = self._base(test_id, claimed_key_id=UNKNOWN_KEY_ID)
        return self._make(test_id, "unknown_key_id", kind, device, value, rid)

    # -- decompress stage and body ------------------------------------------------------------------

    def _broken_body(
        self, test_id: int, category: str, plaintext: bytes, compression: Compression
    ) -> CorpusRecord:
        kind: Kind = self._rng.choice(KINDS)
        device = self._rng.choice(self._devices)
        value, rid = self._seal_plaintext(device, kind, plaintext, compression)
        return self._make(test_id, category, kind, device, value, rid)

    def _bad_zstd_bomb(self, test_id: int) -> CorpusRecord:
        return self._broken_body(test_id, "zstd_bomb", self._bomb_declared, "zstd")

    def _bad_zstd_bomb_streamed(self, test_id: int) -> CorpusRecord:
        return self._broken_body(test_id, "zstd_bomb_streamed", self._bomb_streamed, "zstd")

    def _valid_body(self, kind: Kind) -> bytes:
        return pack_body(encode_tensor(self._row(kind), spec(MODEL_FOR_KIND[kind]).input_dtype))

    def _bad_not_zstd(self, test_id: int) -> CorpusRecord:
        return self._broken_body(test_id, "not_zstd", self._valid_body("frame"), "zstd")

    def _bad_corrupt_zstd(self, test_id: int) -> CorpusRecord:
        frame = zstandard.ZstdCompressor(write_content_size=True).compress(self._valid_body("frame"))
        broken = frame[: -self._rng.randint(1, 4)] if self._rng.random() < 0.5 else frame + b"\x00trailing"
        return self._broken_body(test_id, "corrupt_zstd", broken, "zstd")

    def _bad_bad_body(self, test_id: int) -> CorpusRecord:
        plaintext = self._rng.choice(
            [
                b"\xc1",
                msgpack.packb([1, 2, 3]),
                msgpack.packb({"dt": "float16", "sh": [30], "b": b"\x00" * 10}),
                msgpack.packb({"dt": "complex64", "sh": [30], "b": b""}),
                msgpack.packb({"dt": "float16", "sh": [30], "b": b"\x00" * 60, "zz": 1}),
                msgpack.packb({"dt": "int8", "sh": [30], "b": b"\x00" * 30}),
            ]
        )
        return self._broken_body(test_id, "bad_body", plaintext, "none")

    # -- validate stage -----------------------------------------------------------------------------

    def _bad_replayed(self, test_id: int) -> CorpusRecord:
        if not self._recent_good:
            raise RuntimeError("a replay needs a good record drawn before it")
        original = self._rng.choice(self._recent_good)
        return dataclasses.replace(
            original, test_id=test_id, expect=CATEGORIES["replayed"], category="replayed"
        )

    def _bad_stale(self, test_id: int) -> CorpusRecord:
        past_ms = time.time_ns() // 1_000_000 - self._max_age_ms - self._rng.randint(60_000, 7_200_000)
        kind, device, value, rid = self._base(test_id, capture_time_ms=past_ms)
        return self._make(test_id, "stale", kind, device, value, rid)

    def _bad_future(self, test_id: int) -> CorpusRecord:
        ahead_ms = time.time_ns() // 1_000_000 + self._rng.randint(60_000, 7_200_000)
        kind, device, value, rid = self._base(test_id, capture_time_ms=ahead_ms)
        return self._make(test_id, "future", kind, device, value, rid)

    def _bad_wrong_shape(self, test_id: int) -> CorpusRecord:
        kind: Kind = self._rng.choice(KINDS)
        x = self._row(kind)
        if kind == "embedding":
            wrong = self._rng.choice([np.concatenate([x, x]), x[:-1], x.reshape(-1, 1)])
        else:
            wrong = self._rng.choice([x[:16, :16], x.reshape(32, 32, 1), x.reshape(-1)])
        kind, device, value, rid = self._base(test_id, kind=kind, x=np.ascontiguousarray(wrong))
        return self._make(test_id, "wrong_shape", kind, device, value, rid)

    def _bad_wrong_dtype(self, test_id: int) -> CorpusRecord:
        kind: Kind = self._rng.choice(KINDS)
        choices: list[TensorDtype] = ["float32", "int8"] if kind == "embedding" else ["float16", "int8"]
        kind, device, value, rid = self._base(test_id, kind=kind, dtype=self._rng.choice(choices))
        return self._make(test_id, "wrong_dtype", kind, device, value, rid)

    def _bad_unknown_model(self, test_id: int) -> CorpusRecord:
        model = self._rng.choice(["no-such-model", "embedding-scorer-v2", "模型"])
        kind, device, value, rid = self._base(test_id, kind="embedding", model=model)
        return self._make(test_id, "unknown_model", kind, device, value, rid)

    def _bad_unknown_version(self, test_id: int) -> CorpusRecord:
        kind: Kind = self._rng.choice(KINDS)
        version = self._versions[MODEL_FOR_KIND[kind]] + self._rng.randint(1, 99)
        kind, device, value, rid = self._base(test_id, kind=kind, model_version=version)
        return self._make(test_id, "unknown_version", kind, device, value, rid)
