"""Signed manifests: what an artifact is, signed with Ed25519 by a key the workers trust.

A :class:`Manifest` describes one published version (model, version, artifact sha256 and byte size,
input spec, metrics, lineage, creation time, signer, and for a model the zoo did not build its declared
signature). Its canonical bytes are JSON with sorted keys,
no whitespace and ASCII only; the signature covers ``b"edgestream.manifest.v1\\0"`` + those bytes, so
the signer's key id is signed too and a signature cannot be replayed for another kind of record.

A key id is ``ed25519:`` + the first 16 hex digits of the sha256 of the raw public key. The private
key is a PKCS#8 PEM file of mode 0600; trusted keys are a JSON file ``{"format": 1, "keys":
{key_id: base64(raw public key)}}``.

Workers call :func:`load_verified`: signature first (:class:`UntrustedSigner`, :class:`BadSignature`),
then the bytes against the signed sha256 (:class:`ArtifactMismatch`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgestream.pipeline.errors import ConfigError
from edgestream.pipeline.files import atomic_write, sha256_hex
from edgestream.pipeline.registry.artifacts import ArtifactStore, check_sha256
from edgestream.pipeline.registry.errors import (
    ArtifactMismatch,
    BadSignature,
    MalformedRegistryRecord,
    UntrustedSigner,
)

if TYPE_CHECKING:
    from pathlib import Path

SIGNATURE_CONTEXT: Final = b"edgestream.manifest.v1\0"
"""Prefix of every signed message (domain separation)."""
KEY_ID_PREFIX: Final = "ed25519:"
TRUSTED_FORMAT: Final = 1
SIGNING_KEY_FILE: Final = "signing-key.pem"
"""The registry's private key, in a registry home (``edgestream registry keygen``)."""
TRUSTED_KEYS_FILE: Final = "trusted-keys.json"
"""The registry keys workers pin, in a registry home: they sign manifests and rollout states."""
_PRIVATE_MODE: Final = 0o600


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    """A read-only copy holding only JSON types (tuples become lists), as the canonical bytes see it."""
    try:
        plain = json.loads(json.dumps(dict(mapping), sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise MalformedRegistryRecord(f"not representable as JSON: {e}") from e
    return MappingProxyType(plain)


@dataclass(frozen=True, slots=True)
class Manifest:
    """One published version of a model: what to load, what it expects, how good it is, where it
    came from."""

    model: str
    """Model name as envelopes spell it, e.g. ``frame-classifier`` (the ``control.models`` key)."""
    version: int
    """Registry version, 1, 2, … per model."""
    variant: str
    """The zoo size the artifact was built as (``tiny``, ``medium``, ``full``)."""
    sha256: str
    """Hex sha256 of the artifact (the ONNX bytes): its name in the artifact store."""
    size_bytes: int
    """Length of the artifact."""
    input_dtype: str
    """Dtype of the input tensor, e.g. ``float16``."""
    input_shape: tuple[int, ...]
    """Shape of ONE item, without the batch dimension."""
    metrics: Mapping[str, float] = field(default_factory=dict, hash=False)
    """Evaluation metrics, e.g. ``accuracy`` (held out, measured by running the ONNX graph)."""
    lineage: Mapping[str, Any] = field(default_factory=dict, hash=False)
    """Free-form provenance: parent version, training windows, sample count, …"""
    created_at_ms: int = 0
    """When the manifest was made (Unix ms)."""
    signer_key_id: str = ""
    """Key id of the key that signs it (set by :meth:`SigningKey.sign`)."""
    signature: Mapping[str, Any] | None = field(default=None, hash=False)
    """The model's declared signature as JSON types (``pipeline/models/signature.py``), for a model the
    zoo did not build; None for a zoo model (its canonical bytes then hold no ``signature`` key, so
    manifests signed before signatures existed still verify)."""

    def __post_init__(self) -> None:
        if not self.model:
            raise MalformedRegistryRecord("manifest: empty model name")
        if self.version < 1:
            raise MalformedRegistryRecord(
                f"manifest of {self.model}: version must be >= 1, got {self.version}"
            )
        if self.size_bytes < 0:
            raise MalformedRegistryRecord(f"manifest of {self.model}: negative size_bytes")
        check_sha256(self.sha256)
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        metrics = {str(k): float(v) for k, v in self.metrics.items()}
        object.__setattr__(self, "metrics", _frozen(metrics))
        object.__setattr__(self, "lineage", _frozen(self.lineage))
        if self.signature is not None:
            object.__setattr__(self, "signature", _frozen(self.signature))

    def to_dict(self) -> dict[str, Any]:
        """The manifest as JSON types (``signature`` only when there is one)."""
        data: dict[str, Any] = {
            "model": self.model,
            "version": self.version,
            "variant": self.variant,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "input": {"dtype": self.input_dtype, "shape": list(self.input_shape)},
            "metrics": dict(self.metrics),
            "lineage": dict(self.lineage),
            "created_at_ms": self.created_at_ms,
            "signer_key_id": self.signer_key_id,
        }
        if self.signature is not None:
            data["signature"] = dict(self.signature)
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """The manifest ``to_dict`` made; :class:`MalformedRegistryRecord` says what is wrong."""
        try:
            return cls(
                model=_typed(data["model"], str),
                version=_typed(data["version"], int),
                variant=_typed(data["variant"], str),
                sha256=_typed(data["sha256"], str),
                size_bytes=_typed(data["size_bytes"], int),
                input_dtype=_typed(data["input"]["dtype"], str),
                input_shape=tuple(_typed(d, int) for d in data["input"]["shape"]),
                metrics=_typed(data["metrics"], dict),
                lineage=_typed(data["lineage"], dict),
                created_at_ms=_typed(data["created_at_ms"], int),
                signer_key_id=_typed(data["signer_key_id"], str),
                signature=None if data.get("signature") is None else _typed(data["signature"], dict),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise MalformedRegistryRecord(f"malformed manifest: {str(e)[:300]}") from e

    def canonical_bytes(self) -> bytes:
        """Deterministic bytes of every field: what the signature covers."""
        return json.dumps(
            self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        ).encode()


def _typed(value: Any, kind: type[Any]) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
    return value


@dataclass(frozen=True, slots=True)
class SignedManifest:
    """A manifest with the Ed25519 signature of its canonical bytes."""

    manifest: Manifest
    """What is signed."""
    signature: bytes
    """64-byte Ed25519 signature over ``SIGNATURE_CONTEXT + manifest.canonical_bytes()``."""
    key_id: str
    """Id of the signing key (equal to ``manifest.signer_key_id`` when genuine)."""

    @property
    def version(self) -> int:
        """The manifest's version."""
        return self.manifest.version

    def to_dict(self) -> dict[str, Any]:
        """JSON types: the manifest, the base64 signature, the key id."""
        return {
            "manifest": self.manifest.to_dict(),
            "signature": base64.b64encode(self.signature).decode(),
            "key_id": self.key_id,
        }

    @classmethod
    def from_dict(cls, data: Any) -> SignedManifest:
        """The signed manifest ``to_dict`` made (not verified: see :func:`verify`)."""
        try:
            signature = base64.b64decode(_typed(data["signature"], str), validate=True)
            return cls(Manifest.from_dict(data["manifest"]), signature, _typed(data["key_id"], str))
        except (KeyError, TypeError, ValueError, OverflowError, binascii.Error) as e:
            raise MalformedRegistryRecord(f"malformed signed manifest: {str(e)[:300]}") from e


def key_id_of(public_raw: bytes) -> str:
    """``ed25519:<16 hex>``: the id of a raw 32-byte Ed25519 public key."""
    return KEY_ID_PREFIX + hashlib.sha256(public_raw).hexdigest()[:16]


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class SigningKey:
    """An Ed25519 private key that signs manifests."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self._public_raw = _raw(private.public_key())
        self._key_id = key_id_of(self._public_raw)

    @classmethod
    def generate(cls) -> SigningKey:
        """A new random key."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        """The key in the PKCS#8 PEM file ``path``; refused (:class:`ConfigError`) when the file is
        readable by group or others, like ssh does."""
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
            pem = path.read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read signing key {path}: {e}") from e
        if mode & 0o077:
            raise ConfigError(f"signing key {path} has mode {mode:04o}; it must be 0600")
        try:
            private = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{path} is not a PEM private key: {e}") from e
        if not isinstance(private, Ed25519PrivateKey):
            raise ConfigError(f"{path} holds a {type(private).__name__}, not an Ed25519 key")
        return cls(private)

    def save(self, path: Path, *, overwrite: bool = False) -> None:
        """Write the key as PKCS#8 PEM, mode 0600, atomically; never over an existing file unless
        ``overwrite``."""
        if path.exists() and not overwrite:
            raise ConfigError(f"{path} exists; refusing to overwrite a signing key")
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = self._private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        atomic_write(path, pem, mode=_PRIVATE_MODE)

    @property
    def key_id(self) -> str:
        """``ed25519:<16 hex>``."""
        return self._key_id

    @property
    def public_raw(self) -> bytes:
        """The raw 32-byte public key (what :class:`TrustedKeys` holds)."""
        return self._public_raw

    def sign_message(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message``; callers prefix their own context (domain
        separation), as :meth:`sign` does with ``SIGNATURE_CONTEXT``."""
        return self._private.sign(message)

    def sign(self, manifest: Manifest) -> SignedManifest:
        """Sign ``manifest`` (its ``signer_key_id`` set to this key's id)."""
        signed = replace(manifest, signer_key_id=self._key_id)
        signature = self._private.sign(SIGNATURE_CONTEXT + signed.canonical_bytes())
        return SignedManifest(signed, signature, self._key_id)


@dataclass(frozen=True, slots=True)
class TrustedKeys:
    """The public keys whose signatures workers accept, by key id."""

    keys: Mapping[str, bytes] = field(default_factory=dict)
    """Key id -> raw 32-byte Ed25519 public key."""

    def __post_init__(self) -> None:
        for key_id, raw in self.keys.items():
            if len(raw) != 32 or key_id_of(raw) != key_id:
                raise ConfigError(f"trusted key {key_id!r} does not match its public key")
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))

    def __contains__(self, key_id: object) -> bool:
        return key_id in self.keys

    def public_key(self, key_id: str) -> Ed25519PublicKey:
        """The trusted public key ``key_id``; :class:`UntrustedSigner` when there is none."""
        raw = self.keys.get(key_id)
        if raw is None:
            raise UntrustedSigner(key_id)
        return Ed25519PublicKey.from_public_bytes(raw)

    def verifies(self, key_id: str, signature: bytes, message: bytes) -> bool:
        """Whether ``signature`` is ``key_id``'s over ``message``; :class:`UntrustedSigner` when the key
        is not trusted."""
        public = self.public_key(key_id)
        try:
            public.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def with_key(self, public_raw: bytes) -> TrustedKeys:
        """These keys and ``public_raw``."""
        return TrustedKeys({**self.keys, key_id_of(public_raw): public_raw})

    def without(self, key_id: str) -> TrustedKeys:
        """These keys less ``key_id`` (revocation)."""
        return TrustedKeys({k: v for k, v in self.keys.items() if k != key_id})

    @classmethod
    def load(cls, path: Path) -> TrustedKeys:
        """The trusted keys file; :class:`ConfigError` when missing or malformed."""
        try:
            data = json.loads(path.read_text())
            if data.get("format") != TRUSTED_FORMAT:
                raise ValueError(f"unsupported format {data.get('format')!r}")
            keys = {str(k): base64.b64decode(v, validate=True) for k, v in data["keys"].items()}
        except FileNotFoundError as e:
            raise ConfigError(f"no trusted keys file {path} (edgestream registry keygen makes one)") from e
        except (OSError, ValueError, KeyError, TypeError, AttributeError, binascii.Error) as e:
            raise ConfigError(f"{path}: malformed trusted keys file: {e!r}") from e
        return cls(keys)

    def save(self, path: Path) -> None:
        """Write the file atomically (mode 0644: public keys)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {
            "format": TRUSTED_FORMAT,
            "keys": {k: base64.b64encode(v).decode() for k, v in sorted(self.keys.items())},
        }
        atomic_write(path, (json.dumps(body, indent=2) + "\n").encode())


def verify(signed: SignedManifest, trusted: TrustedKeys) -> Manifest:
    """The manifest, once its signature verifies under a trusted key.

    :class:`UntrustedSigner` when the key id is not trusted; :class:`BadSignature` when the signature
    does not verify over the manifest as it is now, or the manifest names another signer.
    """
    manifest = signed.manifest
    public = trusted.public_key(signed.key_id)
    if manifest.signer_key_id != signed.key_id:
        raise BadSignature(
            manifest.model, manifest.version, signed.key_id, f"names signer {manifest.signer_key_id!r}"
        )
    try:
        public.verify(signed.signature, SIGNATURE_CONTEXT + manifest.canonical_bytes())
    except InvalidSignature as e:
        raise BadSignature(manifest.model, manifest.version, signed.key_id) from e
    return manifest


def load_verified(store: ArtifactStore, signed: SignedManifest, trusted: TrustedKeys) -> bytes:
    """The artifact bytes of ``signed``, verified: signature (:func:`verify`), then the bytes' sha256
    and length against the signed manifest (:class:`ArtifactMismatch`), whatever the store did."""
    manifest = verify(signed, trusted)
    data = store.get(manifest.sha256)
    actual = sha256_hex(data)
    if actual != manifest.sha256 or len(data) != manifest.size_bytes:
        raise ArtifactMismatch(manifest.sha256, actual, f"{manifest.model} v{manifest.version}")
    return data
