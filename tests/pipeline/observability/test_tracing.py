"""Tracing set up from the OTEL_* variables, without a broker: off by default, the exporters and samplers
each name gives, a clear error for anything unusable, and the ``file`` exporter's OTLP JSON lines."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType

import pytest
from opentelemetry.sdk.trace.export import ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Decision, TraceIdRatioBased
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    set_span_in_context,
)

from edgestream.pipeline.observability.otlpjson import OtlpJsonFileExporter, read_spans
from edgestream.pipeline.observability.tracing import (
    LinkedParentBased,
    Tracing,
    TracingSetupError,
    exporters_from_env,
    sampler_from_env,
    tracing_from_env,
)

SAMPLED = SpanContext(0xA1, 0xB1, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
UNSAMPLED = SpanContext(0xA2, 0xB2, is_remote=True, trace_flags=TraceFlags(TraceFlags.DEFAULT))


@pytest.fixture
def file_env(tmp_path: Path) -> dict[str, str]:
    return {"OTEL_TRACES_EXPORTER": "file", "EDGESTREAM_TRACES_FILE": str(tmp_path / "traces.jsonl")}


@pytest.mark.parametrize("value", [None, "", "none", " None "])
def test_tracing_is_off_unless_an_exporter_is_named(value: str | None) -> None:
    env = {} if value is None else {"OTEL_TRACES_EXPORTER": value}
    assert tracing_from_env("svc", env=env) is None


def test_each_exporter_name_gives_its_exporter(file_env: dict[str, str]) -> None:
    made = exporters_from_env({**file_env, "OTEL_TRACES_EXPORTER": "console, file,otlp"})
    assert [type(e).__name__ for e in made] == [
        "ConsoleSpanExporter",
        "OtlpJsonFileExporter",
        "OTLPSpanExporter",
    ]
    assert isinstance(made[0], ConsoleSpanExporter)
    assert type(made[2]).__module__ == "opentelemetry.exporter.otlp.proto.http.trace_exporter"
    for exporter in made:
        exporter.shutdown()


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaegerish"}, "'jaegerish'"),
        ({"OTEL_TRACES_EXPORTER": "none,console"}, "'none' cannot be combined"),
        ({"OTEL_TRACES_EXPORTER": "file"}, "EDGESTREAM_TRACES_FILE"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "http/json"),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "sometimes"}, "'sometimes'"),
        (
            {
                "OTEL_TRACES_EXPORTER": "console",
                "OTEL_TRACES_SAMPLER": "traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "2",
            },
            "from 0 to 1",
        ),
        (
            {
                "OTEL_TRACES_EXPORTER": "console",
                "OTEL_TRACES_SAMPLER": "traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "x",
            },
            "from 0 to 1",
        ),
    ],
)
def test_unusable_settings_stop_setup_with_what_is_wrong(env: dict[str, str], says: str) -> None:
    with pytest.raises(TracingSetupError, match=says) as raised:
        tracing_from_env("svc", env=env)
    assert raised.value.reason == "tracing_config"


def test_a_missing_otlp_package_is_an_error_naming_the_package_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.import_module

    def without_exporters(name: str, package: str | None = None) -> ModuleType:
        if name.startswith("opentelemetry.exporter.otlp"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", without_exporters)
    with pytest.raises(TracingSetupError, match="pip install 'opentelemetry-exporter-otlp-proto-http'"):
        tracing_from_env("svc", env={"OTEL_TRACES_EXPORTER": "otlp"})
    grpc = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}
    with pytest.raises(TracingSetupError, match="opentelemetry-exporter-otlp-proto-grpc"):
        tracing_from_env("svc", env=grpc)


def test_an_unwritable_traces_file_is_an_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    env = {"OTEL_TRACES_EXPORTER": "file", "EDGESTREAM_TRACES_FILE": str(blocker / "traces.jsonl")}
    with pytest.raises(TracingSetupError, match="cannot be opened"):
        tracing_from_env("svc", env=env)


def test_the_default_sampler_is_parent_based_and_follows_links() -> None:
    sampler = sampler_from_env({})
    assert isinstance(sampler, LinkedParentBased)

    def decision(links: list[Link] | None = None, parent: SpanContext | None = None) -> Decision:
        context = None if parent is None else set_span_in_context(NonRecordingSpan(parent))
        return sampler.should_sample(context, 0xC1, "unit", SpanKind.CONSUMER, links=links).decision

    assert decision() == Decision.RECORD_AND_SAMPLE  # a root: the root sampler (always on)
    assert decision([Link(UNSAMPLED), Link(SAMPLED)]) == Decision.RECORD_AND_SAMPLE
    assert decision([Link(UNSAMPLED)]) == Decision.DROP  # the devices decided not to sample
    assert decision(parent=UNSAMPLED) == Decision.DROP
    assert decision([Link(SAMPLED)], parent=UNSAMPLED) == Decision.DROP  # a parent outranks links


def test_sampler_names_and_their_ratio() -> None:
    ratio = sampler_from_env(
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}
    )
    assert isinstance(ratio, LinkedParentBased)
    root = ratio._root
    assert isinstance(root, TraceIdRatioBased)
    assert root.rate == 0.25
    assert sampler_from_env({"OTEL_TRACES_SAMPLER": "always_off"}) is ALWAYS_OFF
    assert sampler_from_env({"OTEL_TRACES_SAMPLER": "ALWAYS_ON"}) is ALWAYS_ON
    off = sampler_from_env({"OTEL_TRACES_SAMPLER": "parentbased_always_off"})
    assert isinstance(off, LinkedParentBased)
    assert off.should_sample(None, 1, "root").decision == Decision.DROP
    assert off.should_sample(None, 1, "unit", links=[Link(SAMPLED)]).decision == Decision.RECORD_AND_SAMPLE


def test_the_file_exporter_writes_one_otlp_json_line_per_export(file_env: dict[str, str]) -> None:
    tracing = tracing_from_env("edgestream-test", {"edgestream.region": "eu-west"}, env=file_env)
    assert tracing is not None
    tracer = tracing.tracer
    parent = tracer.start_span(
        "process edge.eu-west.ingest", kind=SpanKind.CONSUMER, links=[Link(SAMPLED, {"n": 1})]
    )
    parent.set_attribute("messaging.batch.message_count", 3)
    parent.set_attribute("edgestream.model", ["a", "b"])
    parent.set_attribute("ratio", 0.5)
    parent.set_attribute("flag", True)
    child = tracer.start_span("commit", set_span_in_context(parent), start_time=1_000)
    child.end(2_000)
    parent.end()
    tracing.shutdown()  # flushes the batch processor

    path = Path(file_env["EDGESTREAM_TRACES_FILE"])
    lines = path.read_text().splitlines()
    assert lines
    assert all(line.startswith('{"resourceSpans":[') for line in lines)
    request = json.loads(lines[0])
    resource = {kv["key"]: kv["value"] for kv in request["resourceSpans"][0]["resource"]["attributes"]}
    assert resource["service.name"] == {"stringValue": "edgestream-test"}
    assert resource["edgestream.region"] == {"stringValue": "eu-west"}
    scope = request["resourceSpans"][0]["scopeSpans"][0]["scope"]
    assert scope["name"] == "edgestream"

    spans = {s["name"]: s for s in read_spans(path)}
    unit, commit = spans["process edge.eu-west.ingest"], spans["commit"]
    assert unit["kind"] == 5  # OTLP's SPAN_KIND_CONSUMER
    assert commit["kind"] == 1  # INTERNAL
    assert len(unit["traceId"]) == 32
    assert len(unit["spanId"]) == 16
    assert int(unit["traceId"], 16) == parent.get_span_context().trace_id
    assert "parentSpanId" not in unit
    assert commit["parentSpanId"] == unit["spanId"]
    assert commit["traceId"] == unit["traceId"]
    assert (commit["startTimeUnixNano"], commit["endTimeUnixNano"]) == ("1000", "2000")
    attributes = {kv["key"]: kv["value"] for kv in unit["attributes"]}
    assert attributes["messaging.batch.message_count"] == {"intValue": "3"}
    assert attributes["edgestream.model"] == {
        "arrayValue": {"values": [{"stringValue": "a"}, {"stringValue": "b"}]}
    }
    assert attributes["ratio"] == {"doubleValue": 0.5}
    assert attributes["flag"] == {"boolValue": True}
    assert unit["links"] == [
        {
            "traceId": f"{0xA1:032x}",
            "spanId": f"{0xB1:016x}",
            "attributes": [{"key": "n", "value": {"intValue": "1"}}],
            "flags": 1,
        }
    ]
    assert unit["status"] == {"code": StatusCode.UNSET.value, "message": ""}
    assert unit["resource"]["service.name"] == {"stringValue": "edgestream-test"}


def test_the_file_exporter_fails_an_export_it_cannot_write_without_raising(tmp_path: Path) -> None:
    exporter = OtlpJsonFileExporter(tmp_path / "t.jsonl")
    tracing = Tracing.of([exporter], batch=False)
    exporter.shutdown()  # the file is closed under it
    span = tracing.tracer.start_span("x")
    span.end()  # the export fails (logged by the SDK); nothing raises here
    assert (tmp_path / "t.jsonl").read_text() == ""
    tracing.shutdown()


def test_otel_service_name_wins_over_the_default(
    file_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "renamed")
    tracing = tracing_from_env("edgestream-test", env={**file_env, "OTEL_SERVICE_NAME": "renamed"})
    assert tracing is not None
    tracing.tracer.start_span("x").end()
    tracing.shutdown()
    (span,) = read_spans(Path(file_env["EDGESTREAM_TRACES_FILE"]))
    assert span["resource"]["service.name"] == {"stringValue": "renamed"}
