"""The signed device catalogue: which model versions a device may use, per family and tier, and what
each takes; signed by the registry's Ed25519 key like manifests, so a device trusts nothing else.

A device cannot read ``control.models`` (only workers may), so the registry publishes for devices one
small JSON file (``edgestream registry catalogue``; the gateway serves it verbatim):

``{"catalogue": {"format": 1, "issued_ms", "expires_ms", "models": [{"family", "tier", "version",
"route", "sha256", "bytes", "input": {"kind", "dtype", "wire", "shape"[, "classes"]}}, ...]},
"key_id": "ed25519:…", "signature": base64}``.

For each family (a model name of the registry) and each tier (the manifest's variant: ``tiny``,
``medium``, ``full``; ``signed`` for a user's model) one entry: the stable version when it is of that
tier (``route`` ``stable``: send unpinned), else the newest pinnable version of that tier (``pin``:
send with ``mver``), else the newest published version of that tier (``local``: the edge does not
serve it; a device may only run it itself, as its fallback). The signature covers
``b"edgestream.device-catalogue.v1\\0"`` + the key id + ``b"\\0"`` + the canonical JSON of the
``catalogue`` object (sorted keys, no whitespace, ASCII): the signature is checked over the object as
received before any field is read. A device accepts a catalogue only when it is well-formed, signed by
a registry key it trusts, and not expired (:func:`verify_catalogue`, each refusal a
:class:`~edgestream.pipeline.registry.errors.RegistryError` with a stable ``reason``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from edgestream.pipeline.contract import fields as f
from edgestream.pipeline.errors import UnknownModel
from edgestream.pipeline.models.zoo import spec
from edgestream.pipeline.registry.artifacts import check_sha256
from edgestream.pipeline.registry.errors import (
    BadSignature,
    MalformedRegistryRecord,
    RegistryError,
    UntrustedSigner,
)

if TYPE_CHECKING:
    from edgestream.pipeline.registry.signing import Manifest, SignedManifest, SigningKey, TrustedKeys
    from edgestream.pipeline.registry.state import ModelState

CATALOGUE_FORMAT: Final = 1
"""``format`` of the catalogue object this build writes and reads."""
CATALOGUE_CONTEXT: Final = b"edgestream.device-catalogue.v1\0"
"""Prefix of every signed catalogue message (domain separation from manifests and states)."""
CATALOGUE_FILE: Final = "device-catalogue.json"
"""The catalogue's file name in a registry home (what the gateway serves by default)."""
DEFAULT_TTL_MS: Final = 7 * 24 * 3600 * 1000
"""How long a catalogue is valid after it is issued, by default (a week): reissue it before then."""
MAX_CATALOGUE_BYTES: Final = 1 << 20
"""Largest catalogue file read at all."""
MAX_ENTRIES: Final = 4096
"""Most models one catalogue may list."""
_SIGNATURE_BYTES: Final = 64

Route = Literal["stable", "pin", "local"]
"""How a device uses an entry: send unpinned, send pinned to its version, or run it only itself."""
ROUTES: Final[tuple[Route, ...]] = ("stable", "pin", "local")


class MalformedCatalogue(MalformedRegistryRecord):
    """The catalogue file does not parse into its fields and types."""

    reason = "bad_catalogue"


class BadCatalogueSignature(BadSignature):
    """The catalogue's Ed25519 signature does not verify under the key it names."""

    def __init__(self, key_id: str) -> None:
        RegistryError.__init__(self, f"device catalogue (key {key_id[:40]!r}): signature does not verify")
        self.model = ""
        self.version = 0
        self.key_id = key_id


class CatalogueExpired(RegistryError):
    """The catalogue's validity ended (or it was issued in the future): fetch a fresh one."""

    reason = "catalogue_expired"


@dataclass(frozen=True, slots=True)
class InputSpec:
    """What one model takes (``docs/contract.md`` section 4, "Model input specs")."""

    kind: str
    """Ingest kind: ``embedding`` or ``frame``."""
    dtype: str
    """The graph input's dtype."""
    wire: tuple[str, ...]
    """Wire dtypes a device may send (the first is what a device sends by default)."""
    shape: tuple[int, ...]
    """One item's shape, without the batch axis."""
    classes: tuple[str, ...] = ()
    """Class names in label order, when the registry knows them (zoo models)."""


@dataclass(frozen=True, slots=True)
class CatalogueEntry:
    """One model version a device may use."""

    family: str
    """The model name envelopes carry."""
    tier: str
    """The manifest's variant: ``tiny``, ``medium``, ``full`` (or ``signed``)."""
    version: int
    """The registry version."""
    route: Route
    """How a device uses it (``Route``)."""
    sha256: str
    """Hex sha256 of the ONNX artifact (what ``fetch_artifact`` asks for)."""
    size_bytes: int
    """The artifact's length."""
    input: InputSpec
    """What it takes."""


@dataclass(frozen=True, slots=True)
class DeviceCatalogue:
    """The catalogue's content (what is signed)."""

    issued_ms: int
    expires_ms: int
    models: tuple[CatalogueEntry, ...]

    def entry(self, family: str, tier: str) -> CatalogueEntry | None:
        """``family``'s entry of ``tier``, or None."""
        for e in self.models:
            if e.family == family and e.tier == tier:
                return e
        return None

    def tiers(self, family: str) -> tuple[CatalogueEntry, ...]:
        """Every entry of ``family``."""
        return tuple(e for e in self.models if e.family == family)

    def to_dict(self) -> dict[str, Any]:
        """The ``catalogue`` object as JSON types."""
        return {
            "format": CATALOGUE_FORMAT,
            "issued_ms": self.issued_ms,
            "expires_ms": self.expires_ms,
            "models": [_entry_dict(e) for e in self.models],
        }


def _entry_dict(e: CatalogueEntry) -> dict[str, Any]:
    spec_: dict[str, Any] = {
        "kind": e.input.kind,
        "dtype": e.input.dtype,
        "wire": list(e.input.wire),
        "shape": list(e.input.shape),
    }
    if e.input.classes:
        spec_["classes"] = list(e.input.classes)
    return {
        "family": e.family,
        "tier": e.tier,
        "version": e.version,
        "route": e.route,
        "sha256": e.sha256,
        "bytes": e.size_bytes,
        "input": spec_,
    }


def _message(key_id: str, catalogue: Any) -> bytes:
    return CATALOGUE_CONTEXT + key_id.encode() + b"\0" + f.dump_json(catalogue)


def sign_catalogue(key: SigningKey, catalogue: DeviceCatalogue) -> bytes:
    """The catalogue file's bytes: ``catalogue``, signed with ``key``."""
    body = catalogue.to_dict()
    signature = key.sign_message(_message(key.key_id, body))
    signed = {"catalogue": body, "key_id": key.key_id, "signature": base64.b64encode(signature).decode()}
    return f.dump_json(signed) + b"\n"


def verify_catalogue(raw: bytes, trusted: TrustedKeys, *, now_ms: int) -> DeviceCatalogue:
    """The catalogue in the file bytes ``raw``, once well-formed, signed by a trusted key and valid at
    ``now_ms``. Raises :class:`MalformedCatalogue`, :class:`UntrustedSigner`,
    :class:`BadCatalogueSignature` or :class:`CatalogueExpired` and nothing else."""
    if type(raw) is not bytes or len(raw) > MAX_CATALOGUE_BYTES:
        raise MalformedCatalogue(f"a device catalogue is bytes of at most {MAX_CATALOGUE_BYTES}")
    try:
        outer = f.mapping(f.load_json(raw), "device catalogue")
        key_id = f.text(f.field(outer, "key_id"), "key_id", max_chars=80)
        signature = base64.b64decode(f.text(f.field(outer, "signature"), "signature"), validate=True)
        body = f.mapping(f.field(outer, "catalogue"), "catalogue")
        message = _message(key_id, body)
    except (ValueError, binascii.Error) as e:  # FieldError, lone surrogates
        raise MalformedCatalogue(f"malformed device catalogue: {str(e)[:300]}") from e
    if len(signature) != _SIGNATURE_BYTES:
        raise MalformedCatalogue("malformed device catalogue: the signature is not 64 bytes")
    if key_id not in trusted:
        raise UntrustedSigner(key_id, "device catalogue")
    if not trusted.verifies(key_id, signature, message):
        raise BadCatalogueSignature(key_id)
    catalogue = parse_catalogue(body)
    if not catalogue.issued_ms <= now_ms < catalogue.expires_ms:
        raise CatalogueExpired(
            f"device catalogue valid from {catalogue.issued_ms} to {catalogue.expires_ms} ms, now {now_ms}"
        )
    return catalogue


def parse_catalogue(body: Mapping[Any, Any]) -> DeviceCatalogue:
    """The fields of a ``catalogue`` object (not verified); :class:`MalformedCatalogue` names the bad
    one."""
    try:
        if f.field(dict(body), "format") != CATALOGUE_FORMAT:
            raise f.FieldError(f"unsupported catalogue format (this build reads {CATALOGUE_FORMAT})")
        models = f.array(f.field(dict(body), "models"), "models")
        if len(models) > MAX_ENTRIES:
            raise f.FieldError(f"more than {MAX_ENTRIES} models")
        catalogue = DeviceCatalogue(
            issued_ms=f.integer(f.field(dict(body), "issued_ms"), "issued_ms", minimum=0),
            expires_ms=f.integer(f.field(dict(body), "expires_ms"), "expires_ms", minimum=0),
            models=tuple(_entry_of(f.mapping(m, "model")) for m in models),
        )
    except (ValueError, RegistryError) as e:
        raise MalformedCatalogue(f"malformed device catalogue: {str(e)[:300]}") from e
    if catalogue.expires_ms <= catalogue.issued_ms:
        raise MalformedCatalogue("malformed device catalogue: it expires before it is issued")
    pairs = [(e.family, e.tier) for e in catalogue.models]
    if len(set(pairs)) != len(pairs):
        raise MalformedCatalogue("malformed device catalogue: a family lists a tier twice")
    return catalogue


def _entry_of(data: dict[Any, Any]) -> CatalogueEntry:
    route = f.field(data, "route")
    if route not in ROUTES:
        raise f.FieldError(f"route must be one of {', '.join(ROUTES)}")
    spec_ = f.mapping(f.field(data, "input"), "input")
    shape = tuple(f.integer(d, "shape", minimum=0) for d in f.array(f.field(spec_, "shape"), "shape"))
    wire = tuple(f.text(d, "wire", max_chars=16) for d in f.array(f.field(spec_, "wire"), "wire"))
    classes = tuple(f.text(c, "classes", max_chars=256) for c in f.array(spec_.get("classes", []), "classes"))
    if not wire:
        raise f.FieldError("input.wire is empty")
    return CatalogueEntry(
        family=f.text(f.field(data, "family"), "family", max_chars=128),
        tier=f.text(f.field(data, "tier"), "tier", max_chars=32),
        version=f.integer(f.field(data, "version"), "version", minimum=1, maximum=2**32 - 1),
        route=route,
        sha256=check_sha256(f.text(f.field(data, "sha256"), "sha256", max_chars=64)),
        size_bytes=f.integer(f.field(data, "bytes"), "bytes", minimum=0),
        input=InputSpec(
            kind=f.text(f.field(spec_, "kind"), "kind", max_chars=16),
            dtype=f.text(f.field(spec_, "dtype"), "dtype", max_chars=16),
            wire=wire,
            shape=shape,
            classes=classes,
        ),
    )


# --- building it from the registry's state ----------------------------------------------------------


def build_catalogue(
    states: Mapping[str, ModelState],
    *,
    now_ms: int,
    ttl_ms: int = DEFAULT_TTL_MS,
    skipped: list[str] | None = None,
) -> DeviceCatalogue:
    """The catalogue of the registry's current ``states`` (verified by the caller), valid from
    ``now_ms`` for ``ttl_ms``: per family and tier, the version a device uses (module docstring). An
    entry whose input spec cannot be told (neither a zoo model nor a declared signature) is left out
    and described in ``skipped``, so one odd model does not keep the others from devices."""
    if ttl_ms <= 0:
        raise ValueError(f"a catalogue's validity must be positive, not {ttl_ms} ms")
    entries: list[CatalogueEntry] = []
    for family in sorted(states):
        state = states[family]
        tiers = sorted({signed.manifest.variant for signed in state.versions})
        for tier in tiers:
            chosen = _choose(state, tier)
            if chosen is None:
                continue
            try:
                entries.append(_entry(chosen[0], chosen[1]))
            except MalformedRegistryRecord as e:
                if skipped is not None:
                    skipped.append(f"{family[:128]}/{tier[:32]}: {e}")
    return DeviceCatalogue(now_ms, now_ms + ttl_ms, tuple(entries))


def _choose(state: ModelState, tier: str) -> tuple[SignedManifest, Route] | None:
    """The version of ``tier`` a device uses, and how (stable, else newest pinnable, else newest)."""
    of_tier = [s for s in state.versions if s.manifest.variant == tier]
    if not of_tier:
        return None
    stable = [s for s in of_tier if s.version == state.stable]
    if stable:
        return stable[0], "stable"
    pinnable = [s for s in of_tier if s.version in state.pinnable]
    if pinnable:
        return pinnable[-1], "pin"
    return of_tier[-1], "local"


def _entry(signed: SignedManifest, route: Route) -> CatalogueEntry:
    manifest = signed.manifest
    return CatalogueEntry(
        family=manifest.model,
        tier=manifest.variant,
        version=manifest.version,
        route=route,
        sha256=manifest.sha256,
        size_bytes=manifest.size_bytes,
        input=input_spec(manifest),
    )


def input_spec(manifest: Manifest) -> InputSpec:
    """What ``manifest``'s model takes: from its declared signature, else from the zoo."""
    shape = tuple(manifest.input_shape)
    if manifest.signature is not None:
        from edgestream.pipeline.registry.loader import manifest_signature

        signature = manifest_signature(manifest)
        wire = tuple(signature.input.wire) or (manifest.input_dtype,)
        return InputSpec(signature.ingest, manifest.input_dtype, wire, shape)
    try:
        zoo = spec(manifest.model, manifest.variant)
    except UnknownModel as e:
        raise MalformedRegistryRecord(
            f"{manifest.model} v{manifest.version}: neither a zoo model nor a declared signature"
        ) from e
    return InputSpec(zoo.kind, manifest.input_dtype, (manifest.input_dtype,), shape, zoo.class_names)
