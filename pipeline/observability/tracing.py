"""OpenTelemetry tracing of an edgestream process, set up from the standard ``OTEL_*`` variables.

Off by default: with ``OTEL_TRACES_EXPORTER`` unset (or ``none``) `tracing_from_env` returns None and
nothing of the SDK runs; callers keep ``None`` and guard on it, so the hot path pays one comparison.

On, it reads:

* ``OTEL_TRACES_EXPORTER``: a comma-separated list of ``otlp``, ``console``, ``file`` (and ``none``),
  or the name of any exporter a package registers (the ``opentelemetry_traces_exporter`` entry point).
  ``otlp`` speaks ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_PROTOCOL``
  (``http/protobuf``, the default, or ``grpc``) to ``OTEL_EXPORTER_OTLP[_TRACES]_ENDPOINT``, through
  the exporter package, which must be installed: when it is not, setup fails with the package to
  install (never a silent drop). ``file`` appends OTLP JSON lines to ``EDGESTREAM_TRACES_FILE``
  (``otlpjson.py``); the SLA report reads them.
* ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``: ``parentbased_always_on`` by default. Every
  ``parentbased_*`` sampler is `LinkedParentBased`: a span without a parent but with links (the
  worker's unit span, linked to its records) is sampled when any linked context is.
* ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``: the resource, as the SDK reads them.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind, Tracer, get_current_span
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from edgestream import __version__
from edgestream.pipeline.errors import ConfigError
from edgestream.pipeline.observability.otlpjson import OtlpJsonFileExporter

log = logging.getLogger(__name__)

TRACES_FILE_ENV = "EDGESTREAM_TRACES_FILE"
"""Where the ``file`` exporter appends its OTLP JSON lines."""
EXPORTER_ENV = "OTEL_TRACES_EXPORTER"
"""The exporters (comma-separated); unset or ``none``: tracing off."""
SAMPLER_ENV = "OTEL_TRACES_SAMPLER"
"""The sampler's name (``parentbased_always_on`` when unset)."""
SAMPLER_ARG_ENV = "OTEL_TRACES_SAMPLER_ARG"
"""The ratio of the ``*traceidratio`` samplers (1.0 when unset)."""
PROTOCOL_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
"""Where the ``otlp`` exporter's protocol is read from, first set wins."""
DEFAULT_SAMPLER = "parentbased_always_on"
"""The sampler when none is set: follow the parent (or the links); sample every root."""
MAX_LINKS = 4096
"""Links a span may carry unless ``OTEL_SPAN_LINK_COUNT_LIMIT`` says otherwise: a unit span links every
record of its unit, more than the SDK's default of 128."""
OTLP_EXPORTERS: dict[str, tuple[str, str]] = {
    "http/protobuf": (
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
        "opentelemetry-exporter-otlp-proto-http",
    ),
    "grpc": (
        "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
        "opentelemetry-exporter-otlp-proto-grpc",
    ),
}
"""Per OTLP protocol: the module of its span exporter and the package that provides it."""
SCOPE = "edgestream"
"""The instrumentation scope of every edgestream span."""


class TracingSetupError(ConfigError):
    """The ``OTEL_*`` tracing variables name something this process cannot do."""

    reason = "tracing_config"


class LinkedParentBased(ParentBased):
    """Parent-based sampling that treats links as parents for a span that has no parent: sampled when
    any linked context is sampled, dropped when links exist and none is, the root sampler otherwise.
    So a unit span is kept exactly when one of its records' traces is (no orphan units, no lost ones)."""

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        """The decision for one new span (the SDK's sampler interface)."""
        parent = get_current_span(parent_context).get_span_context()
        if links and not (parent is not None and parent.is_valid):
            if any(link.context.trace_flags.sampled for link in links):
                return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, trace_state)
            return SamplingResult(Decision.DROP)
        return super().should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        """The sampler's name in the SDK's descriptions."""
        root: str = self._root.get_description()
        return f"LinkedParentBased{{root:{root}}}"


def _ratio(env: Mapping[str, str]) -> float:
    raw = env.get(SAMPLER_ARG_ENV, "1.0")
    try:
        ratio = float(raw)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        raise TracingSetupError(f"{SAMPLER_ARG_ENV}={raw!r}: a sampling ratio is a number from 0 to 1")
    return ratio


def sampler_from_env(env: Mapping[str, str]) -> Sampler:
    """The sampler ``OTEL_TRACES_SAMPLER`` (and its argument) names."""
    name = env.get(SAMPLER_ENV, "").strip().lower() or DEFAULT_SAMPLER
    roots: dict[str, Callable[[], Sampler]] = {
        "always_on": lambda: ALWAYS_ON,
        "always_off": lambda: ALWAYS_OFF,
        "traceidratio": lambda: TraceIdRatioBased(_ratio(env)),
    }
    if name in roots:
        return roots[name]()
    base = name.removeprefix("parentbased_")
    if name.startswith("parentbased_") and base in roots:
        return LinkedParentBased(roots[base]())
    known = ", ".join([*roots, *(f"parentbased_{r}" for r in roots)])
    raise TracingSetupError(f"{SAMPLER_ENV}={name!r} is not a sampler edgestream knows ({known})")


def _otlp_exporter(env: Mapping[str, str]) -> SpanExporter:
    protocol = next((env[k].strip() for k in PROTOCOL_ENVS if env.get(k, "").strip()), "http/protobuf")
    if protocol not in OTLP_EXPORTERS:
        raise TracingSetupError(
            f"OTLP protocol {protocol!r} is not supported for traces here: use http/protobuf or grpc "
            f"({' / '.join(PROTOCOL_ENVS)}), or OTEL_TRACES_EXPORTER=file"
        )
    module, package = OTLP_EXPORTERS[protocol]
    try:
        exporter_type: type[SpanExporter] = importlib.import_module(module).OTLPSpanExporter
    except ImportError as err:
        raise TracingSetupError(
            f"OTEL_TRACES_EXPORTER=otlp ({protocol}) needs the package {package}, which is not "
            f"installed ({err}): pip install '{package}' (or 'edgestream[otlp]' for http/protobuf), or "
            f"set OTEL_TRACES_EXPORTER=file with {TRACES_FILE_ENV}"
        ) from err
    return exporter_type()  # endpoint, headers, timeout: from the OTEL_EXPORTER_OTLP_* variables


def _file_exporter(env: Mapping[str, str]) -> SpanExporter:
    path = env.get(TRACES_FILE_ENV, "").strip()
    if not path:
        raise TracingSetupError(f"OTEL_TRACES_EXPORTER=file needs {TRACES_FILE_ENV}, the file to append to")
    try:
        return OtlpJsonFileExporter(Path(path))
    except OSError as err:
        raise TracingSetupError(f"{TRACES_FILE_ENV}={path!r} cannot be opened for appending: {err}") from err


def _registered_exporter(name: str) -> SpanExporter:
    found = list(entry_points(group="opentelemetry_traces_exporter", name=name))
    if not found:
        raise TracingSetupError(
            f"{EXPORTER_ENV} names {name!r}, which is neither otlp, console, file nor none, and no "
            "installed package registers a trace exporter by that name"
        )
    exporter_type: type[SpanExporter] = found[0].load()
    return exporter_type()


def exporters_from_env(env: Mapping[str, str]) -> list[SpanExporter]:
    """The exporters ``OTEL_TRACES_EXPORTER`` names; [] when tracing is off."""
    names = [n.strip().lower() for n in env.get(EXPORTER_ENV, "").split(",") if n.strip()]
    if "none" in names:
        if len(names) > 1:
            raise TracingSetupError(f"{EXPORTER_ENV}={env[EXPORTER_ENV]!r}: 'none' cannot be combined")
        return []
    made: list[SpanExporter] = []
    for name in dict.fromkeys(names):
        if name == "otlp":
            made.append(_otlp_exporter(env))
        elif name == "console":
            made.append(ConsoleSpanExporter())
        elif name == "file":
            made.append(_file_exporter(env))
        else:
            made.append(_registered_exporter(name))
    return made


@dataclass(frozen=True, slots=True)
class Tracing:
    """A process's tracing: its provider and the tracer its spans are made with."""

    provider: TracerProvider
    """Owns the span processors; `shutdown` flushes them."""
    tracer: Tracer
    """Makes the spans (scope ``edgestream``)."""

    @classmethod
    def of(
        cls,
        exporters: Sequence[SpanExporter],
        *,
        sampler: Sampler | None = None,
        resource: Resource | None = None,
        batch: bool = True,
    ) -> Tracing:
        """Tracing that sends every span to ``exporters``: batched in the SDK's background thread
        (``batch``), or synchronously as each span ends (tests, ``console``)."""
        limits = SpanLimits(max_links=None if os.environ.get("OTEL_SPAN_LINK_COUNT_LIMIT") else MAX_LINKS)
        provider = TracerProvider(
            sampler=sampler or LinkedParentBased(ALWAYS_ON),
            resource=resource or Resource.create({}),
            span_limits=limits,
            shutdown_on_exit=True,
        )
        for exporter in exporters:
            simple = not batch or isinstance(exporter, ConsoleSpanExporter)
            provider.add_span_processor(
                SimpleSpanProcessor(exporter) if simple else BatchSpanProcessor(exporter)
            )
        return cls(provider, provider.get_tracer(SCOPE, __version__))

    def shutdown(self) -> None:
        """Export what is buffered and stop the exporters. Idempotent."""
        self.provider.shutdown()


def tracing_from_env(
    service: str, attributes: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None
) -> Tracing | None:
    """The process's tracing as the ``OTEL_*`` variables of ``env`` (the process's by default) set it
    up, or None when they leave it off. ``service`` is ``service.name`` unless ``OTEL_SERVICE_NAME``
    says otherwise; ``attributes`` add to the resource (region, node). Raises `TracingSetupError` when
    a variable names something unusable, so a misconfiguration stops the process at startup."""
    env = os.environ if env is None else env
    exporters = exporters_from_env(env)
    if not exporters:
        return None
    sampler = sampler_from_env(env)
    named = {} if env.get("OTEL_SERVICE_NAME") else {"service.name": service}
    resource = Resource.create({**named, **(attributes or {})})
    tracing = Tracing.of(exporters, sampler=sampler, resource=resource)
    log.info(
        "tracing on: %s, sampler %s",
        ", ".join(type(e).__name__ for e in exporters),
        type(sampler).__name__,
    )
    return tracing
