"""A model's registry state (one compacted record per model on ``control.models``) and its pure
transitions.

State: the published versions (signed manifests), the ``stable`` version, an optional ``canary``
(version, current fraction, its stages), the versions a request may pin, a bounded history of rollout
steps, a revision counter and the time of the last change. Every transition returns a new state (the
revision one higher) or raises :class:`InvalidTransition` naming why.

A state carries the signed manifests of the versions that may still matter, not of every version ever
published (`retire_versions`, after every transition): each state is one record that every follower
reads whole on every change, and a state that kept them all grew ~2 KiB per published version (273 KiB
at v128 in a long-lived demo home, read by about eight followers per change) and would stop fitting
the broker's 1 MiB records after ~500 versions, leaving the registry unable to publish, promote or roll
back anything. Kept: the stable version, the canary, every pinnable version, the
`ROLLBACK_DEPTH` versions that successive rollbacks of stable would restore, the newest version of
each variant (what the device catalogue offers), and the `KEEP_NEWEST` newest. An older version is
retired: it can no longer be canaried or pinned (publish its artifact again, as a new version).

Rules:

- ``publish`` appends version ``latest + 1``; the model's first version becomes stable at once (there is
  nothing to canary it against), later ones are candidates until promoted.
- ``start_canary(version)`` needs a published version that is not stable and no canary in progress;
  it serves ``stages[0]`` of devices (or ``fraction``, which then becomes the first stage).
- ``advance`` moves the canary to its next stage; reaching 1.0 makes it stable and ends the canary.
- ``rollback`` removes the canary, or with none, returns stable to the version the last promotion
  replaced; the reason is recorded either way.
- ``allow_pin`` / ``disallow_pin``: any published version may be made pinnable; the stable version is
  always pinnable (it is served anyway).

The wire format is JSON (sorted keys, compact): ``{"format": 1, "model", "revision", "updated_at_ms",
"stable", "canary": null | {"version", "fraction", "stages", "started_at_ms"}, "pinnable": [...],
"versions": [{"manifest": {...}, "signature": base64, "key_id"}], "history": [{"at_ms", "action",
"version", "from_version", "fraction", "reason"}]}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal, get_args

from edgestream.pipeline.contract import fields as f
from edgestream.pipeline.registry.errors import InvalidTransition, MalformedRegistryRecord
from edgestream.pipeline.registry.signing import SignedManifest

STATE_FORMAT: Final = 1
DEFAULT_STAGES: Final[tuple[float, ...]] = (0.05, 0.25, 1.0)
"""Canary fractions, in order; the last is always 1.0 (promotion)."""
MAX_HISTORY: Final = 200
"""History entries kept in the record (oldest dropped first), so the record stays small."""
KEEP_NEWEST: Final = 10
"""Newest published versions a state keeps whatever they are (candidates not yet canaried among them)."""
ROLLBACK_DEPTH: Final = 4
"""Earlier stable versions a state keeps, in the order successive rollbacks of stable restore them."""
MAX_NAME_CHARS: Final = 200
"""Longest model name a state may carry."""

Action = Literal["publish", "canary", "advance", "promote", "rollback", "pin", "unpin"]


@dataclass(frozen=True, slots=True)
class Canary:
    """A version served to a fraction of devices, on its way to stable."""

    version: int
    """The canary version."""
    fraction: float
    """Share of devices it serves now, in (0, 1)."""
    stages: tuple[float, ...]
    """Fractions it goes through, increasing, ending at 1.0; ``fraction`` is one of them."""
    started_at_ms: int
    """When the canary started (Unix ms)."""

    @property
    def stage(self) -> int:
        """1-based index of the current stage in ``stages``."""
        return self.stages.index(self.fraction) + 1


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One rollout step."""

    at_ms: int
    """When (Unix ms)."""
    action: Action
    """What happened."""
    version: int
    """The version acted on (for a rollback of stable: the version restored)."""
    from_version: int | None = None
    """The stable version replaced (promote, rollback of stable), else None."""
    fraction: float | None = None
    """The canary fraction set (canary, advance, promote=1.0), else None."""
    reason: str = ""
    """Why, in the operator's (or the automatic rollback's) words."""


@dataclass(frozen=True, slots=True)
class ModelState:
    """Everything the registry knows about one model: the value of its ``control.models`` record."""

    model: str
    """Model name: the record's key."""
    versions: tuple[SignedManifest, ...] = ()
    """Published versions, oldest first."""
    stable: int | None = None
    """The version every device not in the canary gets; None before the first publish."""
    canary: Canary | None = None
    """The canary in progress, if any."""
    pinnable: frozenset[int] = field(default_factory=frozenset)
    """Versions a request may pin besides the stable one."""
    history: tuple[HistoryEntry, ...] = ()
    """Rollout steps, oldest first (at most ``MAX_HISTORY``)."""
    revision: int = 0
    """Bumped by every transition: a follower sees whether it missed one."""
    updated_at_ms: int = 0
    """When the last transition happened (Unix ms)."""

    @property
    def latest(self) -> int:
        """The highest published version, 0 when none."""
        return self.versions[-1].version if self.versions else 0

    @property
    def retired(self) -> int:
        """How many published versions the state no longer carries (`retire_versions`)."""
        return self.latest - len(self.versions)

    def manifest(self, version: int) -> SignedManifest:
        """The signed manifest of ``version``; :class:`InvalidTransition` when it is not published."""
        for signed in self.versions:
            if signed.version == version:
                return signed
        if 1 <= version < self.latest:
            raise InvalidTransition(
                self.model,
                f"version {version} is retired (a state keeps the versions that may still be served and "
                f"the {KEEP_NEWEST} newest; latest is {self.latest}): publish its artifact again",
            )
        raise InvalidTransition(self.model, f"version {version} is not published (latest is {self.latest})")

    def is_published(self, version: int) -> bool:
        """Whether ``version`` was published."""
        return any(signed.version == version for signed in self.versions)

    def served(self) -> frozenset[int]:
        """Versions devices may be routed to without pinning: stable and the canary's."""
        out = set() if self.stable is None else {self.stable}
        if self.canary is not None:
            out.add(self.canary.version)
        return frozenset(out)

    def allowed_pins(self) -> frozenset[int]:
        """Versions a request may pin: ``pinnable`` and the stable version."""
        return self.pinnable | ({self.stable} if self.stable is not None else set())

    def previous_stable(self) -> int | None:
        """The version the promotion of the current stable replaced, if one did."""
        return None if self.stable is None else self._replaced_by(self.stable)

    def rollback_chain(self, depth: int = ROLLBACK_DEPTH) -> tuple[int, ...]:
        """The versions up to ``depth`` successive rollbacks of stable would restore, in that order."""
        chain: list[int] = []
        version = self.stable
        while version is not None and len(chain) < depth:
            version = self._replaced_by(version)
            if version is None or version in chain or version == self.stable:
                break
            chain.append(version)
        return tuple(chain)

    def _replaced_by(self, version: int) -> int | None:
        """The stable version the promotion of ``version`` replaced, per the history (a rollback that
        restored ``version`` is passed over: the promotion that made it stable counts)."""
        for entry in reversed(self.history):
            if entry.action == "promote" and entry.version == version:
                return entry.from_version
        return None

    # --- serialisation ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The state as JSON types."""
        canary = self.canary
        return {
            "format": STATE_FORMAT,
            "model": self.model,
            "revision": self.revision,
            "updated_at_ms": self.updated_at_ms,
            "stable": self.stable,
            "canary": None
            if canary is None
            else {
                "version": canary.version,
                "fraction": canary.fraction,
                "stages": list(canary.stages),
                "started_at_ms": canary.started_at_ms,
            },
            "pinnable": sorted(self.pinnable),
            "versions": [signed.to_dict() for signed in self.versions],
            "history": [
                {
                    "at_ms": e.at_ms,
                    "action": e.action,
                    "version": e.version,
                    "from_version": e.from_version,
                    "fraction": e.fraction,
                    "reason": e.reason,
                }
                for e in self.history
            ],
        }

    def to_bytes(self) -> bytes:
        """The ``control.models`` record value."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, data: Any) -> ModelState:
        """The state ``to_dict`` made; :class:`MalformedRegistryRecord` says what is wrong, whatever
        ``data`` is (this parser is total: it reads what another principal wrote)."""
        try:
            f.check_depth(data)
            state = _state_of(f.mapping(data, "state"))
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError, RecursionError) as e:
            raise MalformedRegistryRecord(f"malformed registry state: {str(e)[:300]}") from e
        _check_consistent(state)
        return state

    @classmethod
    def from_bytes(cls, value: bytes) -> ModelState:
        """The state in ``value`` (the JSON of :meth:`to_bytes`); only :class:`MalformedRegistryRecord`."""
        try:
            data = f.load_json(value)
        except f.FieldError as e:
            raise MalformedRegistryRecord(f"registry state is not JSON: {str(e)[:300]}") from e
        return cls.from_dict(data)


def _state_of(data: dict[Any, Any]) -> ModelState:
    """The fields of a state, each of its one type (``fields`` raises ``FieldError``)."""
    if f.field(data, "format") != STATE_FORMAT:
        raise f.FieldError(f"unsupported state format (this build reads {STATE_FORMAT})")
    raw_canary = f.field(data, "canary")
    canary = None if raw_canary is None else _canary_of(f.mapping(raw_canary, "canary"))
    stable = f.field(data, "stable")
    versions = f.array(f.field(data, "versions"), "versions")
    pinnable = f.array(f.field(data, "pinnable"), "pinnable")
    history = f.array(f.field(data, "history"), "history")
    return ModelState(
        model=f.text(f.field(data, "model"), "model", max_chars=MAX_NAME_CHARS),
        versions=tuple(SignedManifest.from_dict(v) for v in versions),
        stable=None if stable is None else f.integer(stable, "stable", minimum=1),
        canary=canary,
        pinnable=frozenset(f.integer(v, "pinnable", minimum=1) for v in pinnable),
        history=tuple(_entry_of(f.mapping(e, "history")) for e in history),
        revision=f.integer(f.field(data, "revision"), "revision", minimum=0),
        updated_at_ms=f.integer(f.field(data, "updated_at_ms"), "updated_at_ms"),
    )


def _canary_of(data: dict[Any, Any]) -> Canary:
    stages = tuple(f.number(s, "canary stage") for s in f.array(f.field(data, "stages"), "stages"))
    check_stages(stages)
    canary = Canary(
        version=f.integer(f.field(data, "version"), "canary version", minimum=1),
        fraction=f.number(f.field(data, "fraction"), "canary fraction"),
        stages=stages,
        started_at_ms=f.integer(f.field(data, "started_at_ms"), "started_at_ms"),
    )
    if canary.fraction not in canary.stages[:-1]:
        raise f.FieldError("canary fraction is not one of its stages below 1.0")
    return canary


def _entry_of(e: dict[Any, Any]) -> HistoryEntry:
    from_version, fraction = f.field(e, "from_version"), f.field(e, "fraction")
    return HistoryEntry(
        at_ms=f.integer(f.field(e, "at_ms"), "at_ms"),
        action=_action(f.field(e, "action")),
        version=f.integer(f.field(e, "version"), "history version"),
        from_version=f.optional_integer(from_version, "from_version"),
        fraction=None if fraction is None else f.number(fraction, "history fraction"),
        reason=f.text(f.field(e, "reason"), "reason"),
    )


def _action(value: Any) -> Action:
    for known in get_args(Action):
        if value == known:
            return known  # type: ignore[no-any-return]
    raise ValueError(f"unknown history action {str(value)[:40]!r}")


def _check_consistent(state: ModelState) -> None:
    versions = [signed.version for signed in state.versions]
    problems = []
    if versions != sorted(set(versions)):
        problems.append(f"versions not strictly increasing: {versions}")
    if any(signed.manifest.model != state.model for signed in state.versions):
        problems.append("a manifest names another model")
    referenced = set(state.pinnable) | ({state.stable} if state.stable is not None else set())
    if state.canary is not None:
        referenced.add(state.canary.version)
        if state.canary.fraction not in state.canary.stages:
            problems.append("canary fraction is not one of its stages")
    if referenced - set(versions):
        problems.append(f"refers to unpublished versions {sorted(referenced - set(versions))}")
    if problems:
        raise MalformedRegistryRecord(f"inconsistent state of {state.model!r}: {'; '.join(problems)}")


def check_stages(stages: tuple[float, ...]) -> tuple[float, ...]:
    """``stages`` if strictly increasing within (0, 1] and ending at 1.0, else ``ValueError``."""
    if not stages or stages[-1] != 1.0:
        raise ValueError(f"canary stages must end at 1.0, got {stages}")
    if any(not 0.0 < s <= 1.0 for s in stages) or list(stages) != sorted(set(stages)):
        raise ValueError(f"canary stages must increase strictly within (0, 1], got {stages}")
    return stages


def retire_versions(state: ModelState) -> ModelState:
    """``state`` without the manifests of versions that no longer matter (module docstring: what is
    kept); the state itself when every version is kept."""
    if len(state.versions) <= KEEP_NEWEST:
        return state
    newest_of_variant = {signed.manifest.variant: signed.version for signed in state.versions}
    kept = (
        {signed.version for signed in state.versions[-KEEP_NEWEST:]}
        | state.served()
        | state.pinnable
        | set(state.rollback_chain())
        | set(newest_of_variant.values())
    )
    if len(kept) >= len(state.versions):
        return state
    return replace(state, versions=tuple(s for s in state.versions if s.version in kept))


def _step(state: ModelState, entry: HistoryEntry, **changes: Any) -> ModelState:
    history = (*state.history, entry)[-MAX_HISTORY:]
    stepped = replace(
        state, **changes, history=history, revision=state.revision + 1, updated_at_ms=entry.at_ms
    )
    return retire_versions(stepped)


def publish(state: ModelState, signed: SignedManifest, *, now_ms: int, reason: str = "") -> ModelState:
    """Append ``signed`` as version ``latest + 1`` (stable at once when it is the first)."""
    manifest = signed.manifest
    if manifest.model != state.model:
        raise InvalidTransition(state.model, f"manifest is of model {manifest.model!r}")
    if manifest.version != state.latest + 1:
        raise InvalidTransition(
            state.model, f"next version is {state.latest + 1}, the manifest says {manifest.version}"
        )
    if signed.key_id != manifest.signer_key_id:
        raise InvalidTransition(state.model, "manifest's signer differs from the signature's key id")
    entry = HistoryEntry(now_ms, "publish", manifest.version, reason=reason)
    versions = (*state.versions, signed)
    if state.stable is None:
        return _step(state, entry, versions=versions, stable=manifest.version)
    return _step(state, entry, versions=versions)


def start_canary(
    state: ModelState,
    version: int,
    *,
    now_ms: int,
    fraction: float | None = None,
    stages: tuple[float, ...] = DEFAULT_STAGES,
    reason: str = "",
) -> ModelState:
    """Serve ``version`` to the first stage's share of devices (or ``fraction``, then the stages above it)."""
    state.manifest(version)
    if state.canary is not None:
        raise InvalidTransition(
            state.model,
            f"v{state.canary.version} is already in canary at {state.canary.fraction:.0%}: "
            "promote or roll it back first",
        )
    if version == state.stable:
        raise InvalidTransition(state.model, f"v{version} is already stable")
    try:
        check_stages(stages)
    except ValueError as e:
        raise InvalidTransition(state.model, str(e)) from e
    if fraction is not None:
        if not 0.0 < fraction < 1.0:
            raise InvalidTransition(state.model, f"a canary fraction must be in (0, 1), got {fraction}")
        stages = (fraction, *(s for s in stages if s > fraction))
    if len(stages) < 2:
        raise InvalidTransition(state.model, "a canary needs at least one stage below 1.0")
    canary = Canary(version, stages[0], stages, now_ms)
    entry = HistoryEntry(now_ms, "canary", version, fraction=stages[0], reason=reason)
    return _step(state, entry, canary=canary)


def advance(state: ModelState, *, now_ms: int, reason: str = "") -> ModelState:
    """Move the canary to its next stage; at 1.0 it becomes stable and the canary ends."""
    canary = state.canary
    if canary is None:
        raise InvalidTransition(state.model, "no canary in progress: start one with a version")
    fraction = canary.stages[canary.stage]
    if fraction >= 1.0:
        entry = HistoryEntry(
            now_ms, "promote", canary.version, from_version=state.stable, fraction=1.0, reason=reason
        )
        return _step(state, entry, stable=canary.version, canary=None)
    entry = HistoryEntry(now_ms, "advance", canary.version, fraction=fraction, reason=reason)
    return _step(state, entry, canary=replace(canary, fraction=fraction))


def rollback(state: ModelState, *, now_ms: int, reason: str) -> ModelState:
    """End the canary; with none, return stable to the version its promotion replaced."""
    if state.canary is not None:
        entry = HistoryEntry(
            now_ms, "rollback", state.canary.version, fraction=state.canary.fraction, reason=reason
        )
        return _step(state, entry, canary=None)
    previous = state.previous_stable()
    if previous is None or state.stable is None:
        raise InvalidTransition(state.model, "nothing to roll back: no canary and no earlier stable version")
    if not state.is_published(previous):
        raise InvalidTransition(
            state.model,
            f"v{previous}, which v{state.stable} replaced, is retired (a state keeps {ROLLBACK_DEPTH} "
            "earlier stable versions): publish its artifact again and promote it",
        )
    entry = HistoryEntry(now_ms, "rollback", previous, from_version=state.stable, reason=reason)
    return _step(state, entry, stable=previous)


def allow_pin(state: ModelState, version: int, *, now_ms: int, reason: str = "") -> ModelState:
    """Let requests pin ``version``."""
    state.manifest(version)
    if version in state.pinnable:
        raise InvalidTransition(state.model, f"v{version} is already pinnable")
    entry = HistoryEntry(now_ms, "pin", version, reason=reason)
    return _step(state, entry, pinnable=state.pinnable | {version})


def disallow_pin(state: ModelState, version: int, *, now_ms: int, reason: str = "") -> ModelState:
    """Stop letting requests pin ``version`` (the stable version stays pinnable implicitly)."""
    if version not in state.pinnable:
        raise InvalidTransition(state.model, f"v{version} is not pinnable")
    entry = HistoryEntry(now_ms, "unpin", version, reason=reason)
    return _step(state, entry, pinnable=state.pinnable - {version})
