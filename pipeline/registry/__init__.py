"""The model registry: content-addressed artifacts, Ed25519-signed manifests, rollout state on the
compacted ``control.models`` topic, and the keyed-hash routing of devices to stable or canary.

Modules: ``artifacts`` (artifact stores), ``artifactserver`` (the store over mutual TLS) and ``remote``
(a worker's store on another host: fetched by hash, verified, cached), ``s3config`` and ``s3store``
(the same from an S3-compatible bucket; ``s3store`` imports boto3), ``signing`` (manifests, keys,
verification), ``state`` (a model's state and its pure transitions), ``routing`` (which version answers
a device), ``loader`` (what a worker calls to load a verified artifact), ``client`` (Kafka). ``client``
imports aiokafka and ``loader`` the model zoo; import them from their modules.
"""

from edgestream.pipeline.files import sha256_hex
from edgestream.pipeline.registry.artifacts import ArtifactStore, LocalArtifactStore
from edgestream.pipeline.registry.canary import choose_version, device_bucket
from edgestream.pipeline.registry.errors import (
    ArtifactMismatch,
    ArtifactNotFound,
    BadSignature,
    InvalidTransition,
    MalformedRegistryRecord,
    PinNotAllowed,
    RegistryError,
    UntrustedSigner,
)
from edgestream.pipeline.registry.signing import (
    Manifest,
    SignedManifest,
    SigningKey,
    TrustedKeys,
    key_id_of,
    load_verified,
    verify,
)
from edgestream.pipeline.registry.state import (
    DEFAULT_STAGES,
    Canary,
    HistoryEntry,
    ModelState,
    advance,
    allow_pin,
    disallow_pin,
    publish,
    rollback,
    start_canary,
)

__all__ = [
    "DEFAULT_STAGES",
    "ArtifactMismatch",
    "ArtifactNotFound",
    "ArtifactStore",
    "BadSignature",
    "Canary",
    "HistoryEntry",
    "InvalidTransition",
    "LocalArtifactStore",
    "MalformedRegistryRecord",
    "Manifest",
    "ModelState",
    "PinNotAllowed",
    "RegistryError",
    "SignedManifest",
    "SigningKey",
    "TrustedKeys",
    "UntrustedSigner",
    "advance",
    "allow_pin",
    "choose_version",
    "device_bucket",
    "disallow_pin",
    "key_id_of",
    "load_verified",
    "publish",
    "rollback",
    "sha256_hex",
    "start_canary",
    "verify",
]
