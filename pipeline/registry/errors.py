"""The registry's errors: each an :class:`EdgestreamError` with a stable ``reason`` code.

A worker that refuses an artifact or a rollout state logs and counts it by ``reason``
(``artifact_mismatch``, ``artifact_missing``, ``artifact_unavailable``, ``untrusted_signer``,
``bad_signature``, ``unsigned_state``, ``stale_revision``, ``bad_registry_record``,
``signature_mismatch``) and keeps serving what it had.
"""

from __future__ import annotations

from edgestream.pipeline.errors import EdgestreamError, UnknownModel


class RegistryError(EdgestreamError):
    """Root of the registry's errors."""

    reason = "registry"


class ArtifactMismatch(RegistryError):
    """A stored blob does not hash to the sha256 that names it (or that its manifest signs)."""

    reason = "artifact_mismatch"

    def __init__(self, expected_sha256: str, actual_sha256: str, where: str = "artifact") -> None:
        super().__init__(
            f"{where}: content hashes to sha256 {actual_sha256[:16]}…, expected {expected_sha256[:16]}…; "
            "refusing it"
        )
        self.expected_sha256 = expected_sha256
        self.actual_sha256 = actual_sha256


class ArtifactNotFound(RegistryError):
    """The artifact store has no blob with this sha256."""

    reason = "artifact_missing"

    def __init__(self, sha256: str, where: str) -> None:
        super().__init__(f"no artifact sha256 {sha256[:16]}… in {where}")
        self.sha256 = sha256


class ArtifactUnavailable(RegistryError):
    """The registry's artifact server could not be reached, or refused the fetch (after the retries
    that were worth making)."""

    reason = "artifact_unavailable"
    retriable = True

    def __init__(self, sha256: str, where: str, why: str) -> None:
        super().__init__(f"artifact sha256 {sha256[:16]}… from {where}: {why}")
        self.sha256 = sha256


class UntrustedSigner(RegistryError):
    """The manifest (or rollout state) is signed by a key id that is not in the trusted set."""

    reason = "untrusted_signer"

    def __init__(self, key_id: str, what: str = "manifest") -> None:
        super().__init__(f"{what} signed by key {key_id[:40]!r}, which is not trusted")
        self.key_id = key_id


class BadSignature(RegistryError):
    """The Ed25519 signature does not verify over the manifest's canonical bytes."""

    reason = "bad_signature"

    def __init__(
        self, model: str, version: int, key_id: str, detail: str = "signature does not verify"
    ) -> None:
        super().__init__(f"manifest of {model} v{version} (key {key_id!r}): {detail}")
        self.model = model
        self.version = version
        self.key_id = key_id


class MalformedRegistryRecord(RegistryError):
    """A manifest, registry state or key file that does not parse into its fields and types."""

    reason = "bad_registry_record"


class UnsignedState(MalformedRegistryRecord):
    """A ``control.models`` record that carries no registry signature (the unsigned format 1)."""

    reason = "unsigned_state"


class BadStateSignature(BadSignature):
    """A rollout state's Ed25519 signature does not verify under the key it names."""

    def __init__(self, model: str, key_id: str) -> None:
        RegistryError.__init__(
            self, f"rollout state of {model[:64]!r} (key {key_id[:40]!r}): signature does not verify"
        )
        self.model = model
        self.version = 0
        self.key_id = key_id


class StaleRevision(RegistryError):
    """A rollout state whose revision is not above the one the worker applied: a replay or a repeat."""

    reason = "stale_revision"

    def __init__(self, model: str, revision: int, applied: int) -> None:
        super().__init__(
            f"rollout state of {model[:64]!r} at revision {revision}, not above the applied {applied}"
        )
        self.model = model
        self.revision = revision
        self.applied = applied


class RegistryNotReady(RegistryError):
    """A worker that follows the registry could not read ``control.models`` to its end, or load what a
    current state needs, within its start timeout: it does not start (``workers/edge/following.py``)."""

    reason = "registry_not_ready"
    retriable = True


class InvalidTransition(RegistryError):
    """A rollout step that the model's current state does not allow."""

    reason = "invalid_transition"

    def __init__(self, model: str, message: str) -> None:
        super().__init__(f"{model}: {message}")
        self.model = model


class PinNotAllowed(UnknownModel):
    """A request pins a version the registry does not allow pinning (dead-lettered, like an unknown
    model)."""

    reason = "pin_not_allowed"

    def __init__(self, model: str, version: int) -> None:
        super().__init__(model, version)
        self.args = (f"model {model!r} v{version} may not be pinned",)


class SignatureMismatch(RegistryError):
    """A model's declared signature does not match its ONNX graph: refused at publish and at load."""

    reason = "signature_mismatch"

    def __init__(self, what: str, differences: tuple[str, ...]) -> None:
        super().__init__(f"{what}: the signature does not match the graph: {'; '.join(differences)}")
        self.differences = differences
