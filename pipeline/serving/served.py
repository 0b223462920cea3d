"""The models an edge worker serves, and which one answers a request.

Without the registry a worker serves one version per model family, built locally (``load_models``).
With it (``WorkerSettings.registry``), the worker follows the compacted ``control.models`` topic and
serves every version a model's state names (stable, canary, allowed pins). A new state takes effect
only once every version it needs is loaded, and each is loaded only after its artifact's sha256 and
its manifest's Ed25519 signature are verified; a state that fails is reported and the previous one
stays. A version published with a declared signature (a user's model) is served by it
(``pipeline/serving/signed.py``). A request is answered by the version its device is routed to (a
keyed hash of its id: one device, one version) or the pinned one where the state allows the pin.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgestream.pipeline.contract.envelope import Envelope
from edgestream.pipeline.errors import ProviderUnavailable, ShapeMismatch, UnknownModel
from edgestream.pipeline.models import ModelArtifact, ModelStore
from edgestream.pipeline.models.signature import SignedArtifact
from edgestream.pipeline.models.zoo import FAMILIES
from edgestream.pipeline.registry import ModelState, RegistryError, SignedManifest, choose_version
from edgestream.pipeline.serving.inference import InferenceSession
from edgestream.pipeline.serving.providers import Execution
from edgestream.pipeline.serving.signed import SignedInput, SignedSession

if TYPE_CHECKING:
    from edgestream.workers.edge.settings import WorkerSettings

log = logging.getLogger(__name__)

ModelKey = tuple[str, int]
"""(model name, model version): records of one key share an onnxruntime call."""


@dataclass(frozen=True, slots=True)
class ServedModel:
    """A model loaded for serving: a zoo model, or a user's model served by its declared signature."""

    artifact: ModelArtifact | SignedArtifact
    """What was loaded (name, version, hash, input spec or signature)."""
    session: InferenceSession | SignedSession
    """The onnxruntime session; called from the inference thread only."""
    check_input: Callable[[str, tuple[int, ...]], None]
    """Raises :class:`ShapeMismatch` unless it accepts a body of this dtype and item shape (admission):
    the zoo spec's own check, or the signature's wire dtypes and item shape."""
    dequantise: bool
    """Whether its bodies are decoded dequantised (int8 with its scale: a signed model); zoo bodies are
    views of the decrypted bytes, as they always were."""
    kind: str
    """The ingest kind its requests arrive as (``embedding`` or ``frame``)."""
    sample_inputs: bool
    """Whether its raw inputs may be sampled to the cloud (zoo: embeddings; signed: as declared)."""
    typed: SignedSession | None = None
    """What writes the typed keys of its result records; None for a zoo model (classification)."""
    key: ModelKey = field(init=False)
    """The grouping key of its inference calls: (name, version) of ``artifact``, made once (it is
    read several times per record)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.artifact.name, self.artifact.version))


def load_models(settings: WorkerSettings) -> dict[str, ServedModel]:
    """Build (or reuse from cache) and load every zoo model the worker serves; with the registry, a
    model the zoo does not have (a user's model) is served once the registry's state names it."""
    store = ModelStore(settings.home / "models")
    served: dict[str, ServedModel] = {}
    for name in settings.models:
        if settings.registry and name not in FAMILIES:
            continue
        artifact = store.get(name, settings.model_size)
        served[name] = open_model(artifact, settings)
    return served


def execution_of(settings: WorkerSettings) -> Execution:
    """Where the worker's sessions run: its providers, their options, fallback and IO binding."""
    return Execution(
        providers=settings.providers,
        cuda=settings.cuda,
        tensorrt=settings.tensorrt,
        home=settings.home,
        allow_cpu_fallback=settings.allow_cpu_fallback,
        io_binding=settings.io_binding,
        max_batch=settings.max_batch,
    )


def open_model(artifact: ModelArtifact | SignedArtifact, settings: WorkerSettings) -> ServedModel:
    """An onnxruntime session for ``artifact`` where the worker's settings say, warmed up; raises
    ProviderUnavailable when a GPU provider it asks for is not there (and fallback is not allowed)."""
    execution, threads = execution_of(settings), settings.intra_op_threads
    if isinstance(artifact, SignedArtifact):
        signed = SignedSession(artifact, execution, intra_op_num_threads=threads)
        signature = artifact.signature
        served = ServedModel(
            artifact,
            signed,
            SignedInput(artifact).check_input,
            True,
            signature.ingest,
            signature.sample_inputs,
            signed,
        )
    else:
        session = InferenceSession(artifact, execution, intra_op_num_threads=threads)
        spec = artifact.spec
        served = ServedModel(artifact, session, spec.check_input, False, spec.kind, spec.kind == "embedding")
    warm_s = served.session.warm_up()  # before it serves: a new canary's first requests would pay for it
    log.info(
        "serving %s v%d (%s) on %s, warmed up in %.0f ms",
        artifact.name,
        artifact.version,
        artifact.sha256[:12],
        served.session.providers_in_use,
        warm_s * 1000,
    )
    return served


Loader = Callable[[SignedManifest], ServedModel]
"""Verify and load one registry version (blocking: called in a thread)."""


class ModelCatalog:
    """Which served model answers an envelope; with the registry, the versions its states name."""

    def __init__(
        self,
        base: Mapping[str, ServedModel],
        *,
        routing_key: bytes = b"",
        loader: Loader | None = None,
        on_refused: Callable[[str], None] | None = None,
    ):
        """``base``: one model per family, used while the registry has no state for it (or always,
        without a ``loader``). ``routing_key``: the key of the device hash that picks stable or canary.
        ``on_refused``: called with the reason of each registry state refused (a metric)."""
        self._base = dict(base)
        self._routing_key = routing_key
        self._loader = loader
        self._on_refused = on_refused
        self._states: dict[str, ModelState] = {}
        self._loaded: dict[ModelKey, ServedModel] = {}
        self.refused: dict[str, int] = {}
        """Registry states not applied, by the error's reason (artifact_mismatch, untrusted_signer,
        unsigned_state, bad_signature, stale_revision, bad_registry_record...)."""

    def refuse(self, model: str, err: RegistryError | ProviderUnavailable) -> None:
        """Count and log a registry state of ``model`` that is not applied; what is served stays."""
        self.refused[err.reason] = self.refused.get(err.reason, 0) + 1
        if self._on_refused is not None:
            self._on_refused(err.reason)
        log.error(
            "refused a registry state of %r: %s (%s); serving what it served", model[:64], err.reason, err
        )

    @property
    def models(self) -> dict[ModelKey, ServedModel]:
        """Every model loaded now, by (name, version)."""
        return {**{m.key: m for m in self._base.values()}, **self._loaded}

    def revision(self, name: str) -> int | None:
        """The registry revision applied for ``name``, or None while it serves its base model."""
        state = self._states.get(name)
        return None if state is None else state.revision

    def served_versions(self) -> dict[str, tuple[int, ...]]:
        """Per model, the versions a request can be answered by now."""
        out: dict[str, tuple[int, ...]] = {
            name: (served.key[1],) for name, served in self._base.items() if name not in self._states
        }
        for name, state in self._states.items():
            out[name] = tuple(sorted(set(state.served()) | set(state.pinnable)))
        return out

    def resolve(self, envelope: Envelope) -> ServedModel:
        """The model that answers ``envelope``. Raises UnknownModel (no such model, or a pin the state
        does not allow: ``pin_not_allowed``) or ShapeMismatch (the envelope's kind is not the model's)."""
        state = self._states.get(envelope.model)
        if state is None:
            served = self._base.get(envelope.model)
            if served is None:
                raise UnknownModel(envelope.model, envelope.model_version)
            if envelope.model_version is not None and envelope.model_version != served.artifact.version:
                raise UnknownModel(envelope.model, envelope.model_version)
        else:
            version = choose_version(state, envelope.device_id, self._routing_key, envelope.model_version)
            served = self._loaded[(envelope.model, version)]
        if envelope.kind != served.kind:
            raise ShapeMismatch(f"a {envelope.kind} envelope for {envelope.model}, which takes {served.kind}")
        return served

    async def apply(self, state: ModelState) -> bool:
        """Load what ``state`` needs (verified), then switch to it; False when it was refused."""
        try:
            return await self.switch(state)
        except (RegistryError, ProviderUnavailable) as err:  # a version this host cannot run: refused
            self.refuse(state.model, err)
            return False

    async def switch(self, state: ModelState) -> bool:
        """As :meth:`apply`, but a version that cannot be loaded raises its :class:`RegistryError` or
        :class:`ProviderUnavailable`, uncounted, for a caller whose policy depends on why (a worker's
        start: ``workers/edge/following.py``). False when there is nothing to switch to: no loader, no
        stable version yet, or a revision not above the one applied."""
        if self._loader is None or state.stable is None:
            return False
        current = self._states.get(state.model)
        if current is not None and state.revision <= current.revision:
            return False  # an older or repeated record
        needed = sorted(set(state.served()) | set(state.pinnable))
        for version in needed:
            if (state.model, version) not in self._loaded:
                loaded = await asyncio.to_thread(self._loader, state.manifest(version))
                self._loaded[(state.model, version)] = loaded
        self._states[state.model] = state
        for key in [k for k in self._loaded if k[0] == state.model and k[1] not in needed]:
            del self._loaded[key]  # no longer served: its session goes with it
        log.info("%s revision %d: serving %s", state.model, state.revision, needed)
        return True
