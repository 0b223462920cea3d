"""`edgestream registry ...`: sign and publish models, roll them out (canary stages, rollback, pins).

Local files live under ``--home`` (default ``.edgestream/registry/``): ``artifacts/`` (the content-
addressed store), ``signing-key.pem`` (0600) and ``trusted-keys.json`` (what workers trust). The state
lives on ``control.models``: each mutating command reads the model's state (refusing one not signed by a
trusted key), applies one transition and publishes the new state signed with the home's key.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final

import typer
from rich.console import Console
from rich.table import Table

from edgestream.commands.common import fail, run, utc
from edgestream.commands.topics import Bootstrap
from edgestream.pipeline.registry.signing import SIGNING_KEY_FILE, TRUSTED_KEYS_FILE

if TYPE_CHECKING:
    from collections.abc import Callable

    from edgestream.pipeline.registry.artifacts import ArtifactStore
    from edgestream.pipeline.registry.state import ModelState
    from edgestream.pipeline.settings import KafkaSettings

    Step = Callable[[ModelState, int], ModelState]

app = typer.Typer(
    help="Model registry: keygen, publish signed models, list/show, promote, rollback, pin.",
    no_args_is_help=True,
)

__all__ = [
    "ARTIFACTS_DIR",
    "SIGNING_KEY_FILE",
    "TRUSTED_KEYS_FILE",
    "Home",
    "ModelName",
    "app",
    "artifact_store",
]

ARTIFACTS_DIR: Final = "artifacts"
S3_CACHE_DIR: Final = "cache"
"""Under the home: verified copies of what the commands read from an S3 bucket (``retrain``'s stable)."""

_out = Console()

Home = Annotated[
    Path | None,
    typer.Option(
        "--home", help="Registry directory: artifact store and keys (default: .edgestream/registry)."
    ),
]
ModelName = Annotated[str, typer.Argument(help="Model name, e.g. frame-classifier.")]


def registry_home(home: Path | None) -> Path:
    """The ``--home`` option, or the default registry directory."""
    from edgestream.pipeline.settings import DEFAULT_HOME

    return home if home is not None else DEFAULT_HOME / "registry"


def artifact_store(root: Path) -> ArtifactStore:
    """Where the registry commands put and read artifacts: the S3 bucket of ``EDGESTREAM_REGISTRY_S3__URL``
    (``s3://bucket/prefix``; endpoint, region, credentials and CA from ``EDGESTREAM_REGISTRY_S3__*``,
    ``pipeline/registry/s3config.py``; what it reads cached in ``<home>/cache``), else ``<home>/artifacts``.
    A setting or file that cannot be used ends the command with the reason (never a key)."""
    from pydantic import ValidationError

    from edgestream.pipeline.errors import ConfigError
    from edgestream.pipeline.models.signature import field_errors
    from edgestream.pipeline.registry.artifacts import LocalArtifactStore
    from edgestream.pipeline.registry.s3config import RegistryS3Env

    try:
        s3 = RegistryS3Env().s3
    except ValidationError as err:
        fail(f"EDGESTREAM_REGISTRY_S3__*: {field_errors(err)}")
    if s3 is None:
        return LocalArtifactStore(root / ARTIFACTS_DIR)
    from edgestream.pipeline.registry.s3store import s3_store  # boto3: only where a bucket is used

    try:
        return s3_store(s3, root / S3_CACHE_DIR)
    except ConfigError as err:
        fail(str(err))


def _kafka(bootstrap: str | None) -> KafkaSettings:
    from edgestream.commands.topics import resolve_kafka

    return resolve_kafka(bootstrap)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _state(kafka: KafkaSettings, model: str) -> ModelState:
    from edgestream.pipeline.registry.client import RegistryClient
    from edgestream.pipeline.registry.state import ModelState

    states = await RegistryClient(kafka).read_states()
    return states.get(model, ModelState(model))


async def _apply(kafka: KafkaSettings, home: Path | None, model: str, step: Step) -> ModelState:
    """Read ``model``'s state (verified under the home's trusted keys), apply one transition (given the
    time), publish the result signed with the home's key."""
    from edgestream.pipeline.errors import EdgestreamError
    from edgestream.pipeline.registry.publishing import publisher

    try:
        client = publisher(kafka, registry_home(home))
        current = await client.read_state(model)
    except EdgestreamError as e:
        fail(f"{model}: {e}")
    if current is None or not current.versions:
        fail(f"model {model!r} has no published version (edgestream registry publish {model})")
    new = step(current, _now_ms())
    await client.publish_state(new)
    return new


@app.command()
def keygen(
    home: Home = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing signing key.")] = False,
    trust_dir: Annotated[
        Path | None,
        typer.Option(
            "--trust-dir",
            help="Also write the trusted keys file into this directory, which holds no secret: what "
            "workers on other hosts mount.",
        ),
    ] = None,
) -> None:
    """Make a signing key (0600), add its public key to the trusted keys file, and create the
    artifact store's directory (what `registry serve` serves)."""
    from edgestream.pipeline.errors import EdgestreamError
    from edgestream.pipeline.registry.signing import SigningKey, TrustedKeys

    root = registry_home(home)
    trusted_path = root / TRUSTED_KEYS_FILE
    try:
        key = SigningKey.generate()
        key.save(root / SIGNING_KEY_FILE, overwrite=force)
        trusted = TrustedKeys.load(trusted_path) if trusted_path.exists() else TrustedKeys()
        trusted = trusted.with_key(key.public_raw)
        trusted.save(trusted_path)
        if trust_dir is not None:
            trusted.save(trust_dir / TRUSTED_KEYS_FILE)
        (root / ARTIFACTS_DIR).mkdir(parents=True, exist_ok=True)
    except (EdgestreamError, OSError) as e:
        fail(str(e))
    _out.print(f"signing key {key.key_id} in {root / SIGNING_KEY_FILE}; trusted in {trusted_path}")


@app.command()
def serve(
    home: Annotated[
        Path | None,
        typer.Option(
            "--home", help="State directory: the PKI and the registry (else EDGESTREAM_REGISTRY_SERVER_HOME)."
        ),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (else ..._SERVER_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port; 0 for any free one (else ..._SERVER_PORT).")] = None,
) -> None:
    """Serve the artifact store over mutual TLS 1.3 to the project's identities, read-only, by sha256,
    until SIGTERM/SIGINT: GET /artifacts/sha256/<hash>. Workers on other hosts fetch from it
    (EDGESTREAM_WORKER_REGISTRY_URL)."""
    from pydantic import ValidationError

    from edgestream.pipeline.errors import EdgestreamError
    from edgestream.workers.registry_server import RegistryServerSettings, serve

    overrides = {k: v for k, v in {"home": home, "host": host, "port": port}.items() if v is not None}
    try:
        settings = RegistryServerSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as err:
        fail(str(err))

    def started(bound: int) -> None:
        typer.echo(f"serving {settings.artifacts_path()} on https://{settings.host}:{bound}")  # one line

    try:
        asyncio.run(serve(settings, started))
    except (EdgestreamError, OSError) as err:
        fail(str(err))


@app.command()
def publish(
    model: ModelName,
    size: Annotated[
        str, typer.Option("--size", help="Zoo size to build and publish: tiny, medium, full.")
    ] = "medium",
    home: Home = None,
    models_root: Annotated[
        Path | None, typer.Option("--models-root", help="Model cache (default: .edgestream/models).")
    ] = None,
    lineage: Annotated[
        list[str] | None, typer.Option("--lineage", help="KEY=VALUE provenance to sign with it; repeatable.")
    ] = None,
    onnx: Annotated[
        Path | None,
        typer.Option("--onnx", help="Publish this ONNX file (your own model) instead of a zoo build."),
    ] = None,
    signature: Annotated[
        Path | None,
        typer.Option("--signature", help="The --onnx model's signature, YAML or JSON (docs/models.md)."),
    ] = None,
    bootstrap: Bootstrap = None,
) -> None:
    """Build (or reuse) MODEL/SIZE, store its ONNX bytes, sign a manifest and publish the next version;
    with --onnx and --signature, publish your own model (refused when the signature does not match it)."""
    from edgestream.pipeline.errors import EdgestreamError
    from edgestream.pipeline.files import sha256_hex
    from edgestream.pipeline.models import ModelStore
    from edgestream.pipeline.registry.publishing import publish_artifact
    from edgestream.pipeline.registry.signing import SigningKey, TrustedKeys
    from edgestream.pipeline.settings import DEFAULT_HOME

    extra = _lineage(lineage)
    if onnx is not None or signature is not None:
        _publish_signed(model, onnx, signature, home, extra, bootstrap)
        return
    root = registry_home(home)
    kafka = _kafka(bootstrap)
    store = artifact_store(root)
    try:
        key = SigningKey.load(root / SIGNING_KEY_FILE)
        trusted = TrustedKeys.load(root / TRUSTED_KEYS_FILE)
        artifact = ModelStore(models_root or DEFAULT_HOME / "models").get(model, size)
        data = artifact.path.read_bytes()
    except EdgestreamError as e:
        fail(str(e))
    if sha256_hex(data) != artifact.sha256:
        fail(f"{artifact.path} changed while it was being published")

    state = run(
        publish_artifact(
            kafka,
            store,
            key,
            artifact.spec,
            data,
            metrics={"accuracy": artifact.accuracy, "sklearn_accuracy": artifact.sklearn_accuracy},
            lineage={"zoo_version": artifact.version, **extra},
            trusted=trusted,
        )
    )
    status = "stable" if state.stable == state.latest else "candidate"
    _out.print(
        f"published {model} v{state.latest} ({status}): sha256 {artifact.sha256[:12]}, "
        f"accuracy {artifact.accuracy:.4f}, signed by {key.key_id}"
    )


def _lineage(items: list[str] | None) -> dict[str, str]:
    """``--lineage KEY=VALUE`` options as a mapping."""
    extra: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            fail(f"--lineage {item!r}: use KEY=VALUE")
        extra[name] = value
    return extra


def _publish_signed(
    model: str,
    onnx: Path | None,
    signature: Path | None,
    home: Path | None,
    lineage: dict[str, str],
    bootstrap: str | None,
) -> None:
    """``registry publish MODEL --onnx FILE --signature FILE``: a user's model, checked against its
    signature (each difference printed) before anything is stored or signed."""
    from aiokafka.errors import KafkaError

    from edgestream.pipeline.errors import EdgestreamError
    from edgestream.pipeline.files import sha256_hex
    from edgestream.pipeline.models.signature import load_signature
    from edgestream.pipeline.models.zoo import FAMILIES
    from edgestream.pipeline.registry.errors import SignatureMismatch
    from edgestream.pipeline.registry.publishing import publish_signed
    from edgestream.pipeline.registry.signing import SigningKey, TrustedKeys

    if onnx is None or signature is None:
        fail("--onnx and --signature go together: the ONNX file and the signature that describes it")
    if model in FAMILIES:
        fail(f"{model!r} is a zoo model; publish your own model under a name of its own")
    root = registry_home(home)
    try:
        declared = load_signature(signature)
        data = onnx.read_bytes()
        key = SigningKey.load(root / SIGNING_KEY_FILE)
        trusted = TrustedKeys.load(root / TRUSTED_KEYS_FILE)
    except OSError as e:
        fail(f"cannot read {onnx}: {e}")
    except EdgestreamError as e:
        fail(str(e))
    store = artifact_store(root)
    work = publish_signed(
        _kafka(bootstrap), store, key, model, declared, data, metrics={}, lineage=lineage, trusted=trusted
    )
    try:
        state = asyncio.run(work)
    except SignatureMismatch as e:
        fail("\n  ".join((f"{model}: {onnx} does not match {signature}; not published:", *e.differences)))
    except EdgestreamError as e:
        fail(str(e))
    except KafkaError as e:
        fail(f"{type(e).__name__}: {e}")
    status = "stable" if state.stable == state.latest else "candidate"
    _out.print(
        f"published {model} v{state.latest} ({status}): sha256 {sha256_hex(data)[:12]}, "
        f"{declared.outputs.kind} signature, signed by {key.key_id}"
    )


@app.command("list")
def list_models(bootstrap: Bootstrap = None) -> None:
    """Every model in the registry: stable, canary, pinnable versions."""
    from edgestream.pipeline.registry.client import RegistryClient

    states = run(RegistryClient(_kafka(bootstrap)).read_states())
    table = Table(title="control.models", title_justify="left")
    for column in ("model", "stable", "canary", "pinnable", "versions", "revision", "updated"):
        table.add_column(column)
    for name in sorted(states):
        s = states[name]
        canary = "-" if s.canary is None else _canary(s)
        pins = ", ".join(f"v{v}" for v in sorted(s.pinnable)) or "-"
        stable = "-" if s.stable is None else f"v{s.stable}"
        table.add_row(name, stable, canary, pins, str(len(s.versions)), str(s.revision), utc(s.updated_at_ms))
    _out.print(table)


def _canary(state: ModelState) -> str:
    c = state.canary
    assert c is not None
    return f"v{c.version} at {c.fraction:.0%} (stage {c.stage}/{len(c.stages)})"


@app.command()
def show(model: ModelName, home: Home = None, bootstrap: Bootstrap = None) -> None:
    """MODEL's versions (signature checked against the trusted keys) and its rollout history."""
    from edgestream.pipeline.errors import ConfigError
    from edgestream.pipeline.registry.errors import RegistryError
    from edgestream.pipeline.registry.signing import TrustedKeys, verify

    state = run(_state(_kafka(bootstrap), model))
    if not state.versions:
        fail(f"model {model!r} is not in the registry")
    try:
        trusted: TrustedKeys | None = TrustedKeys.load(registry_home(home) / TRUSTED_KEYS_FILE)
    except ConfigError:
        trusted = None
    versions = Table(title=f"{model} (revision {state.revision})", title_justify="left")
    for column in (
        "version",
        "status",
        "variant",
        "sha256",
        "bytes",
        "accuracy",
        "signer",
        "signature",
        "created",
    ):
        versions.add_column(column)
    for signed in state.versions:
        m = signed.manifest
        status = []
        if m.version == state.stable:
            status.append("stable")
        if state.canary is not None and m.version == state.canary.version:
            status.append(f"canary {state.canary.fraction:.0%}")
        if m.version in state.pinnable:
            status.append("pinnable")
        if trusted is None:
            check = "no trusted keys"
        else:
            try:
                verify(signed, trusted)
                check = "[green]ok[/green]"
            except RegistryError as e:
                check = f"[red]{e.reason}[/red]"
        accuracy = m.metrics.get("accuracy")
        versions.add_row(
            f"v{m.version}",
            ", ".join(status) or "-",
            m.variant,
            m.sha256[:12],
            str(m.size_bytes),
            "-" if accuracy is None else f"{accuracy:.4f}",
            signed.key_id,
            check,
            utc(m.created_at_ms),
        )
    _out.print(versions)
    if state.retired:
        _out.print(
            f"{state.retired} older versions are retired from the state: no longer served, pinned or "
            "canaried (docs/retraining.md)"
        )
    history = Table(title="history", title_justify="left")
    for column in ("at", "action", "version", "from", "fraction", "reason"):
        history.add_column(column)
    for entry in state.history:
        history.add_row(
            utc(entry.at_ms),
            entry.action,
            f"v{entry.version}",
            "-" if entry.from_version is None else f"v{entry.from_version}",
            "-" if entry.fraction is None else f"{entry.fraction:.0%}",
            entry.reason or "-",
        )
    _out.print(history)


@app.command()
def promote(
    model: ModelName,
    version: Annotated[int, typer.Option("--version", min=1, help="The version to start or advance.")],
    fraction: Annotated[
        float | None,
        typer.Option("--fraction", help="Start the canary at this share instead of the first stage."),
    ] = None,
    stages: Annotated[
        str | None, typer.Option("--stages", help="Canary stages, e.g. 0.05,0.25,1.0 (the default).")
    ] = None,
    reason: Annotated[str, typer.Option("--reason", help="Recorded in the history.")] = "",
    home: Home = None,
    bootstrap: Bootstrap = None,
) -> None:
    """Start a canary of VERSION, or move its canary to the next stage (the last makes it stable)."""
    from edgestream.pipeline.registry import state as st

    try:
        chosen = st.DEFAULT_STAGES if stages is None else tuple(float(s) for s in stages.split(","))
    except ValueError:
        fail(f"--stages {stages!r}: use comma-separated fractions, e.g. 0.05,0.25,1.0")
    kafka = _kafka(bootstrap)

    async def go() -> ModelState:
        current = await _state(kafka, model)
        if current.canary is not None and current.canary.version == version:
            if fraction is not None or stages is not None:
                fail("--fraction and --stages apply when a canary starts")
            return await _apply(kafka, home, model, lambda s, now: st.advance(s, now_ms=now, reason=reason))
        return await _apply(
            kafka,
            home,
            model,
            lambda s, now: st.start_canary(
                s, version, now_ms=now, fraction=fraction, stages=chosen, reason=reason
            ),
        )

    state = run(go())
    if state.canary is None:
        _out.print(f"{model} v{state.stable} is stable")
    else:
        _out.print(f"{model}: canary {_canary(state)}, stable v{state.stable}")


@app.command()
def rollback(
    model: ModelName,
    reason: Annotated[str, typer.Option("--reason", help="Recorded in the history.")] = "manual rollback",
    home: Home = None,
    bootstrap: Bootstrap = None,
) -> None:
    """End MODEL's canary; with none, return stable to the version its promotion replaced."""
    from edgestream.pipeline.registry import state as st

    state = run(
        _apply(_kafka(bootstrap), home, model, lambda s, now: st.rollback(s, now_ms=now, reason=reason))
    )
    _out.print(f"{model}: stable v{state.stable}, no canary ({reason})")


@app.command()
def pin(
    model: ModelName,
    allow: Annotated[
        int | None, typer.Option("--allow", min=1, help="Let requests pin this version.")
    ] = None,
    disallow: Annotated[
        int | None, typer.Option("--disallow", min=1, help="Stop letting requests pin this version.")
    ] = None,
    reason: Annotated[str, typer.Option("--reason", help="Recorded in the history.")] = "",
    home: Home = None,
    bootstrap: Bootstrap = None,
) -> None:
    """Allow (or disallow) requests to pin a version of MODEL."""
    from edgestream.pipeline.registry import state as st

    kafka = _kafka(bootstrap)
    if allow is not None and disallow is None:
        state = run(
            _apply(kafka, home, model, lambda s, now: st.allow_pin(s, allow, now_ms=now, reason=reason))
        )
    elif disallow is not None and allow is None:
        state = run(
            _apply(kafka, home, model, lambda s, now: st.disallow_pin(s, disallow, now_ms=now, reason=reason))
        )
    else:
        fail("give exactly one of --allow V or --disallow V")
    pins = ", ".join(f"v{v}" for v in sorted(state.allowed_pins()))
    _out.print(f"{model}: pinnable {pins}")


@app.command()
def catalogue(
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Where to write it (default: <home>/device-catalogue.json)."),
    ] = None,
    ttl_hours: Annotated[
        float, typer.Option("--ttl-hours", min=0.01, help="How long devices accept it (default: a week).")
    ] = 168.0,
    home: Home = None,
    bootstrap: Bootstrap = None,
) -> None:
    """Write the signed device catalogue: per family and tier the version devices use, its artifact's
    sha256 and size and its input spec, signed with the home's key (what the gateway serves)."""
    from edgestream.pipeline.errors import EdgestreamError
    from edgestream.pipeline.files import atomic_write
    from edgestream.pipeline.registry.devicecatalogue import CATALOGUE_FILE, build_catalogue, sign_catalogue
    from edgestream.pipeline.registry.publishing import publisher
    from edgestream.pipeline.registry.signing import SigningKey

    root = registry_home(home)
    path = out if out is not None else root / CATALOGUE_FILE
    try:
        client = publisher(_kafka(bootstrap), root)
        states = run(client.read_states(strict=False))  # a state that does not verify is left out
        skipped: list[str] = []
        built = build_catalogue(states, now_ms=_now_ms(), ttl_ms=int(ttl_hours * 3_600_000), skipped=skipped)
        key = SigningKey.load(root / SIGNING_KEY_FILE)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, sign_catalogue(key, built))
    except EdgestreamError as e:
        fail(str(e))
    for problem in skipped:
        _out.print(f"warning: left out {problem}")
    store = artifact_store(root)
    for entry in built.models:
        try:
            stored = store.has(entry.sha256)
        except EdgestreamError as e:
            fail(str(e))
        if not stored:
            _out.print(f"warning: {entry.family}/{entry.tier} v{entry.version}: artifact not in {store}")
    _out.print(f"device catalogue of {len(built.models)} model(s) in {path}, signed by {key.key_id}")
