"""One error root for edgestream; the policy lives on the class.

Every error carries a stable ``reason`` code (the dead-letter header value, a metric label) and a
``retriable`` flag that tells the worker whether to retry with backoff or dead-letter the record.
Messages are built from typed fields and never contain payload bytes.
"""

from __future__ import annotations

from typing import ClassVar, Literal

Stage = Literal["decode", "decrypt", "decompress", "validate", "infer", "produce"]


class EdgestreamError(Exception):
    """Root of every error edgestream raises on purpose."""

    reason: ClassVar[str] = "internal"
    """Stable, machine-readable code: the DLQ ``reason`` header and a metric label."""
    retriable: ClassVar[bool] = False
    """True when the same operation may succeed if retried (broker down, model loading)."""
    stage: ClassVar[Stage] = "validate"
    """Where in the hot path this error is raised."""


class ConfigError(EdgestreamError):
    """A setting or file the operator supplied is missing or wrong."""

    reason = "config"


class ContractError(EdgestreamError):
    """A record does not satisfy the message contract; it is dead-lettered, never retried."""

    reason = "contract"


class UndecodableEnvelope(ContractError):
    """The record value is not a msgpack map with the envelope's fields and types."""

    reason = "undecodable"
    stage = "decode"


class UnsupportedVersion(ContractError):
    """The envelope names a contract version this build does not speak."""

    reason = "bad_version"
    stage = "decode"

    def __init__(self, version: object) -> None:
        super().__init__(f"unsupported contract version {version!r}")
        self.version = version


class OversizedEnvelope(ContractError):
    """The record, or its decompressed body, is larger than the configured limit."""

    reason = "oversized"
    stage = "decode"

    def __init__(self, size_bytes: int, limit_bytes: int, what: str = "envelope") -> None:
        super().__init__(f"{what} of {size_bytes} bytes exceeds the limit of {limit_bytes} bytes")
        self.size_bytes = size_bytes
        self.limit_bytes = limit_bytes


class UnknownKeyId(ContractError):
    """No region master key with the envelope's key id is configured."""

    reason = "unknown_key"
    stage = "decrypt"

    def __init__(self, region: str, key_id: int) -> None:
        super().__init__(f"no master key {key_id} for region {region!r}")
        self.region = region
        self.key_id = key_id


class AuthenticationFailed(ContractError):
    """AES-GCM rejected the tag: wrong key, tampered ciphertext or tampered header fields."""

    reason = "bad_tag"
    stage = "decrypt"


class DecompressionFailed(ContractError):
    """The plaintext does not decompress with the codec the envelope names."""

    reason = "bad_compression"
    stage = "decompress"


class MalformedBody(ContractError):
    """The decrypted body is not a valid tensor record (dtype, shape and byte length disagree)."""

    reason = "bad_body"
    stage = "validate"


class ShapeMismatch(ContractError):
    """The tensor's dtype or shape does not match the model's input spec."""

    reason = "bad_shape"
    stage = "validate"


class UnknownModel(ContractError):
    """The envelope names a model (or pinned version) this worker does not serve."""

    reason = "unknown_model"
    stage = "validate"

    def __init__(self, model: str, version: int | None = None) -> None:
        shown = model if version is None else f"{model} v{version}"
        super().__init__(f"model {shown!r} is not served here")
        self.model = model
        self.version = version


class UndecodableRecord(ContractError):
    """A result or audit record is not a msgpack map with the record's fields and types."""

    reason = "undecodable_record"
    stage = "decode"


class InferenceFailed(EdgestreamError):
    """onnxruntime raised while running a batch."""

    reason = "infer_failed"
    stage = "infer"


class BrokerError(EdgestreamError):
    """The local Kafka broker could not be resolved, started, reached or stopped."""

    reason = "broker"
