"""One error root for edgestream; the policy lives on the class.

Every error carries a stable ``reason`` code (the dead-letter header value, a metric label) and a
``retriable`` flag that tells the worker whether to retry with backoff or dead-letter the record.
Messages are built from typed fields and never contain payload bytes.
"""

from __future__ import annotations

import uuid
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


class OversizedBatch(ContractError):
    """A record the consumer's reader did not hand out whole (``pipeline/kafkarecords.py``): in place of
    a compressed batch that inflates past its limit, or a value from one larger than any uncompressed
    record may be. The message says which, with the batch's offsets or the value's size and hash."""

    reason = "oversized"
    stage = "decode"


class UndecodableEnvelope(ContractError):
    """The record value is not a msgpack map with the envelope's fields and types."""

    reason = "undecodable"
    stage = "decode"


class BadDeviceId(ContractError):
    """The envelope's device id is not in the contract's normal form: Unicode NFC, no control
    characters (``pipeline/contract/deviceid.py``). The message says which, never quoting the id."""

    reason = "bad_device_id"
    stage = "decode"

    def __init__(self, problem: str) -> None:
        super().__init__(f"the device id {problem}")
        self.problem = problem
        """What is wrong with it."""


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


class RetiredKey(ContractError):
    """The envelope's key id was retired, or its rotation window has ended: known, but refused."""

    reason = "retired_key"
    stage = "decrypt"

    def __init__(self, region: str, key_id: int, retired_at_ms: int | None = None) -> None:
        since = "" if retired_at_ms is None else f" since {retired_at_ms} ms after the epoch"
        super().__init__(f"master key {key_id} of region {region!r} is retired{since}")
        self.region = region
        self.key_id = key_id
        self.retired_at_ms = retired_at_ms
        """When it stopped being accepted (Unix ms), where the key file says."""


class ForgottenDevice(ContractError):
    """The device was forgotten (erased by key): its salt is deleted, so its key can never be derived."""

    reason = "forgotten_device"
    stage = "decrypt"

    def __init__(self, region: str, device_id: str, forgotten_at_ms: int | None = None) -> None:
        since = "" if forgotten_at_ms is None else f" at {forgotten_at_ms} ms after the epoch"
        super().__init__(f"device {device_id!r} of region {region!r} was forgotten{since}")
        self.region = region
        self.device_id = device_id
        self.forgotten_at_ms = forgotten_at_ms
        """When its salt was deleted (Unix ms), where the key file says."""


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


class NonFiniteTensor(ContractError):
    """A float tensor holds NaN or an infinity (as sent, or once an int8 tensor is dequantised)."""

    reason = "non_finite"
    stage = "validate"


class UndecodableRecord(ContractError):
    """A result or audit record is not a msgpack map with the record's fields and types."""

    reason = "undecodable_record"
    stage = "decode"


class InferenceFailed(EdgestreamError):
    """onnxruntime raised while running a batch."""

    reason = "infer_failed"
    stage = "infer"


class NonFiniteOutput(EdgestreamError):
    """The model's scores for one record are NaN or infinite: nothing meaningful can be answered."""

    reason = "non_finite"
    stage = "infer"


class RecordFailed(EdgestreamError):
    """An unexpected exception while handling one record: confined to that record, which is
    dead-lettered with reason ``internal`` and the exception's class name; the worker keeps serving.

    The message names only the exception's class and the step, never its text (which may quote
    decrypted input)."""

    reason = "internal"
    stage: ClassVar[Stage] = "validate"

    def __init__(self, step: str, cause: BaseException) -> None:
        cls = type(cause)
        self.cause_class = f"{cls.__module__}.{cls.__qualname__}"
        """Qualified class name of the unexpected exception (the dead letter's class header)."""
        super().__init__(f"unexpected {self.cause_class} while {step}")


class InferenceCrashed(RecordFailed):
    """`RecordFailed` while inferring or reading the model's answer."""

    stage = "infer"


class OutputFailed(RecordFailed):
    """`RecordFailed` while building a record's result, audit, sample or summary."""

    stage = "produce"


class BrokerError(EdgestreamError):
    """The local Kafka broker could not be resolved, started, reached or stopped."""

    reason = "broker"


class ReplayedRequest(ContractError):
    """The request id was already seen on this partition within the replay window."""

    reason = "replayed"
    stage = "validate"

    def __init__(self, request_id: bytes) -> None:
        shown = str(uuid.UUID(bytes=request_id)) if len(request_id) == 16 else request_id.hex()
        super().__init__(f"request {shown} was already seen")
        self.request_id = request_id


class StaleCapture(ContractError):
    """The capture time is further from the worker's clock than the allowed skew (past or future)."""

    reason = "stale"
    stage = "validate"

    def __init__(self, skew_ms: int, allowed_ms: int) -> None:
        shown = f"{skew_ms} ms in the past" if skew_ms >= 0 else f"{-skew_ms} ms in the future"
        super().__init__(f"capture time is {shown}, beyond the allowed {allowed_ms} ms")
        self.skew_ms = skew_ms
        """Worker time minus capture time: positive for the past, negative for the future."""
        self.allowed_ms = allowed_ms
        """The limit it broke, in the same direction (it may be tighter than the configured one)."""


class RateLimited(ContractError):
    """The device sent more requests than its token bucket allows."""

    reason = "rate_limited"
    stage = "validate"

    def __init__(self, device_id: str, rate_per_s: float, burst: int) -> None:
        super().__init__(f"device {device_id!r} exceeds {rate_per_s:g} requests/s (burst {burst})")
        self.device_id = device_id
        self.rate_per_s = rate_per_s
        self.burst = burst


class KeyMismatch(ContractError):
    """The record's Kafka key is not the envelope's (authenticated) device id."""

    reason = "key_mismatch"
    stage = "validate"

    def __init__(self, device_id: str) -> None:
        super().__init__(f"the record key is not the envelope's device id {device_id!r}")
        self.device_id = device_id


class WrongPartition(ContractError):
    """The record is on another partition than the one its key maps to (murmur2, contract section 9)."""

    reason = "wrong_partition"
    stage = "validate"

    def __init__(self, partition: int, expected: int) -> None:
        super().__init__(f"the record is on partition {partition}; its key maps to partition {expected}")
        self.partition = partition
        self.expected = expected
        """The partition its key maps to."""


class WrongTopic(ContractError):
    """The record is on the ingest topic of another kind than the envelope's (authenticated) kind."""

    reason = "wrong_topic"
    stage = "validate"

    def __init__(self, topic: str, kind: str) -> None:
        super().__init__(f"a {kind!r} envelope on topic {topic!r}")
        self.topic = topic
        self.kind = kind


class KafkaTimeout(EdgestreamError):
    """A topic was not read to the end offsets seen at the start within the time allowed (the one
    timeout of :func:`edgestream.pipeline.kafka.read_to_end`)."""

    reason = "kafka_timeout"
    retriable = True

    def __init__(self, what: str, timeout_ms: int) -> None:
        super().__init__(f"{what} was not read to its end within {timeout_ms} ms")
        self.what = what
        self.timeout_ms = timeout_ms


class OnnxRuntimeInstall(ConfigError):
    """onnxruntime is missing, or both its CPU and its GPU wheel are installed (the CPU wheel then
    shadows the CUDA provider): the message says which package to install or uninstall."""

    reason = "onnxruntime_install"


class ProviderUnavailable(ConfigError):
    """An execution provider the settings ask for is not in this onnxruntime build, or a session did
    not register it (missing CUDA/cuDNN/TensorRT libraries), and CPU fallback is not allowed."""

    reason = "provider_unavailable"

    def __init__(
        self, what: str, provider: str, available: tuple[str, ...], seen_by: str = "this onnxruntime offers"
    ) -> None:
        super().__init__(
            f"{what}: execution provider {provider} is not available ({seen_by} "
            f"{', '.join(available) or 'none'}); install the GPU runtime (pip install 'edgestream[gpu]', "
            "without the CPU onnxruntime wheel), or set allow_cpu_fallback to run on the CPU"
        )
        self.provider = provider
        self.available = available
