"""The registry's artifacts in an S3-compatible bucket, without a server: URLs and keys, the settings
(credentials never shown, one source of artifacts per process, what a worker and a gateway build from
them), and the store's retries and refusals against a scripted client. ``test_registry_s3_server.py``
runs the store against a real one."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError, SSLError
from pydantic import SecretStr, ValidationError
from typer.testing import CliRunner

from edgestream.cli import app
from edgestream.pipeline.errors import ConfigError
from edgestream.pipeline.files import sha256_hex
from edgestream.pipeline.registry.artifacts import LocalArtifactStore
from edgestream.pipeline.registry.errors import ArtifactUnavailable, MalformedRegistryRecord
from edgestream.pipeline.registry.s3config import (
    RegistryS3Env,
    S3Location,
    S3Settings,
    object_key,
    parse_s3_url,
)
from edgestream.pipeline.registry.s3store import S3ArtifactStore
from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.edge.catalog import artifact_store
from edgestream.workers.edge.settings import WorkerSettings
from edgestream.workers.gateway import files as gateway_files
from edgestream.workers.gateway.settings import GatewaySettings

BLOB = b"an onnx graph, as far as the store knows" * 1000
SHA = sha256_hex(BLOB)
SECRET = "do-not-print-this-secret-7f3a"
NO_BROKER = KafkaSettings(bootstrap_servers="127.0.0.1:9")
"""Never reached: these tests read artifacts only."""


# -- URLs, keys and settings --------------------------------------------------------------------------


def test_an_s3_url_names_a_bucket_and_a_prefix() -> None:
    assert parse_s3_url("s3://models/edgestream/prod/") == S3Location("models", "edgestream/prod")
    assert parse_s3_url("s3://models.example-1") == S3Location("models.example-1", "")
    assert str(parse_s3_url("s3://models/a/b")) == "s3://models/a/b"
    assert object_key("edgestream/prod", SHA) == f"edgestream/prod/sha256/{SHA}"
    assert object_key("", SHA) == f"sha256/{SHA}"
    with pytest.raises(MalformedRegistryRecord):
        object_key("p", "../../etc/passwd")


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://models/edgestream", "expected s3://bucket/prefix"),
        ("s3:/models", "expected s3://bucket/prefix"),
        ("s3://", "not an S3 bucket name"),
        ("s3://Models/x", "not an S3 bucket name"),
        ("s3://ab", "not an S3 bucket name"),
        ("s3://a..b/x", "not an S3 bucket name"),
        ("s3://models/a//b", "prefix segment ''"),
        ("s3://models/a/../b", "prefix segment '..'"),
        ("s3://models/a b", "prefix segment 'a b'"),
        ("s3://models/a?x=1", "prefix segment 'a?x=1'"),
    ],
)
def test_a_bad_url_is_refused_saying_why(url: str, why: str) -> None:
    with pytest.raises(ConfigError, match=f"artifact store URL .*{re.escape(why)}"):
        parse_s3_url(url)


def test_credentials_come_from_the_settings_or_a_file_and_are_never_shown(tmp_path: Path) -> None:
    url = "s3://models/p"
    pair = S3Settings(url=url, access_key_id=SecretStr("AKIDEXAMPLE"), secret_access_key=SecretStr(SECRET))
    credentials = pair.credentials()
    assert credentials is not None
    assert (credentials.access_key_id, credentials.secret_access_key.get_secret_value()) == (
        "AKIDEXAMPLE",
        SECRET,
    )
    for shown in (str(pair), repr(pair), pair.model_dump_json()):
        assert SECRET not in shown
        assert "AKIDEXAMPLE" not in shown
    assert S3Settings(url=url).credentials() is None  # the SDK's default chain

    file = tmp_path / "credentials"
    file.write_text(f"[default]\naws_access_key_id = AKIDFILE\naws_secret_access_key = {SECRET}\n[only-id]\n")
    from_file = S3Settings(url=url, credentials_file=file).credentials()
    assert from_file is not None
    assert from_file.access_key_id == "AKIDFILE"
    assert from_file.secret_access_key.get_secret_value() == SECRET
    with pytest.raises(ConfigError, match=r"no \[ci\] section"):
        S3Settings(url=url, credentials_file=file, profile="ci").credentials()
    with pytest.raises(ConfigError, match=r"\[only-id\] has no aws_access_key_id or aws_secret_access_key"):
        S3Settings(url=url, credentials_file=file, profile="only-id").credentials()
    with pytest.raises(ConfigError, match="cannot read it"):
        S3Settings(url=url, credentials_file=tmp_path / "absent").credentials()


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"secret_access_key": SECRET}, "go together"),
        ({"access_key_id": SECRET}, "go together"),
        ({"access_key_id": "id", "secret_access_key": SECRET, "credentials_file": "/c"}, "not both"),
        ({"secret_access_key": SECRET, "url": "s3://BAD"}, "not an S3 bucket name"),
        ({"secret_access_key": SECRET, "endpoint_url": "https://s3.local/path"}, "endpoint_url"),
    ],
)
def test_a_bad_s3_setting_fails_at_start_without_showing_a_secret(fields: dict[str, str], why: str) -> None:
    values = {"url": "s3://models/p", **fields}
    with pytest.raises(ValidationError, match=why) as direct:
        S3Settings.model_validate(values)
    with pytest.raises(ValidationError, match=why) as nested:
        WorkerSettings(kafka=NO_BROKER, registry_s3=values)  # type: ignore[arg-type]
    for error in (direct.value, nested.value):
        assert SECRET not in str(error)


def test_a_process_reads_artifacts_from_one_place(monkeypatch: pytest.MonkeyPatch) -> None:
    s3 = S3Settings(url="s3://models/p", endpoint_url="https://s3.local:9000")
    https = "https://registry:8443"
    with pytest.raises(ValidationError, match="registry_url and registry_s3 are mutually exclusive"):
        WorkerSettings(kafka=NO_BROKER, registry_url=https, registry_s3=s3)
    with pytest.raises(ValidationError, match="registry_url and registry_s3 are mutually exclusive"):
        GatewaySettings(kafka=NO_BROKER, registry_url=https, registry_s3=s3)

    monkeypatch.setenv("EDGESTREAM_WORKER_REGISTRY_S3__URL", "s3://models/edge/prod")
    monkeypatch.setenv("EDGESTREAM_WORKER_REGISTRY_S3__ENDPOINT_URL", "https://s3.local:9000")
    monkeypatch.setenv("EDGESTREAM_WORKER_REGISTRY_S3__SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("EDGESTREAM_WORKER_REGISTRY_S3__ACCESS_KEY_ID", "AKIDENV")
    from_env = WorkerSettings(kafka=NO_BROKER)
    assert from_env.registry_s3 is not None
    assert from_env.registry_s3.location == S3Location("models", "edge/prod")
    assert from_env.registry_s3.resolved_addressing_style() == "path"
    monkeypatch.setenv("EDGESTREAM_WORKER_REGISTRY_URL", https)
    with pytest.raises(ValidationError, match="mutually exclusive") as both:
        WorkerSettings(kafka=NO_BROKER)
    assert SECRET not in str(both.value)

    monkeypatch.setenv("EDGESTREAM_REGISTRY_S3__URL", "s3://models/registry")
    env = RegistryS3Env()
    assert env.s3 is not None
    assert env.s3.location == S3Location("models", "registry")
    assert env.s3.resolved_addressing_style() == "auto"  # AWS: the SDK chooses


def test_a_worker_and_a_gateway_read_through_the_bucket_they_are_given(tmp_path: Path) -> None:
    s3 = S3Settings(url="s3://models/p", endpoint_url="https://s3.local:9000")
    worker = artifact_store(
        WorkerSettings(kafka=NO_BROKER, home=tmp_path, registry_s3=s3, registry_cache_dir=tmp_path / "c")
    )
    assert isinstance(worker, S3ArtifactStore)
    assert worker.cache.root == tmp_path / "c"
    assert worker.location == S3Location("models", "p")
    assert str(worker) == "s3://models/p at https://s3.local:9000"
    gateway_settings = GatewaySettings(kafka=NO_BROKER, home=tmp_path, region="us-east", registry_s3=s3)
    gateway = gateway_files.artifact_store(gateway_settings)
    assert isinstance(gateway, S3ArtifactStore)
    assert gateway.cache.root == gateway_settings.artifacts_cache_path()
    no_ca = s3.model_copy(update={"ca_file": tmp_path / "no-such-ca.pem"})
    with pytest.raises(ConfigError, match=r"no-such-ca\.pem: no such file"):
        artifact_store(WorkerSettings(kafka=NO_BROKER, home=tmp_path, registry_s3=no_ca))


def test_an_sdk_setting_that_cannot_be_used_fails_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")  # the default chain, from the environment
    settings = WorkerSettings(kafka=NO_BROKER, home=tmp_path, registry_s3=S3Settings(url="s3://models/p"))
    with pytest.raises(ConfigError, match=r"S3 client for s3://models/p at AWS us-east-1: ProfileNotFound"):
        artifact_store(settings)


@pytest.mark.parametrize(
    ("variables", "why"),
    [
        ({"URL": "s3://Bad_Bucket/x"}, "EDGESTREAM_REGISTRY_S3__*: s3.url: artifact store URL"),
        ({"URL": "s3://models/x", "SECRET_ACCESS_KEY": SECRET}, "go together"),
        ({"URL": "s3://models/x", "CA_FILE": "/no/ca.pem"}, "S3 ca_file /no/ca.pem: no such file"),
    ],
)
def test_the_registry_commands_refuse_a_bad_bucket_setting_before_publishing(
    tmp_path: Path, variables: dict[str, str], why: str
) -> None:
    env = {f"EDGESTREAM_REGISTRY_S3__{name}": value for name, value in variables.items()}
    argv = ["registry", "publish", "frame-classifier", "--home", str(tmp_path), "--bootstrap", "127.0.0.1:1"]
    result = CliRunner().invoke(app, argv, env={"COLUMNS": "250", **env}, catch_exceptions=False)
    assert result.exit_code == 1
    assert why in result.output
    assert SECRET not in result.output
    assert "Traceback" not in result.output


# -- the store's retries and refusals, against a scripted client --------------------------------------


def _client_error(code: str, status: int, operation: str = "GetObject") -> ClientError:
    """What botocore raises for an error answer."""
    answer = {"Error": {"Code": code, "Message": f"{code} says the server"}}
    return ClientError({**answer, "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


class ScriptedS3:
    """A client whose calls fail as scripted (one exception per call, in order), then answer from
    ``objects``; it records every call."""

    def __init__(
        self, objects: dict[str, bytes], failures: list[Exception], length: int | None = None
    ) -> None:
        self.objects = objects
        self.failures = failures
        self.length = length
        self.calls: list[str] = []
        self.read_bodies = 0

    def _next(self, operation: str) -> None:
        self.calls.append(operation)
        if self.failures:
            raise self.failures.pop(0)

    def get_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        self._next("get")
        if Key not in self.objects:
            raise _client_error("NoSuchKey", 404)
        data = self.objects[Key]
        self.read_bodies += 1
        return {"Body": io.BytesIO(data), "ContentLength": len(data) if self.length is None else self.length}

    def head_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        self._next("head")
        if Key not in self.objects:
            raise _client_error("404", 404, "HeadObject")
        return {"ContentLength": len(self.objects[Key])}

    def put_object(
        self, *, Bucket: str, Key: str, Body: bytes, ContentMD5: str, ContentType: str
    ) -> dict[str, Any]:
        self._next("put")
        self.objects[Key] = Body
        return {}


def _scripted(tmp_path: Path, client: ScriptedS3, sleeps: list[float], **others: Any) -> S3ArtifactStore:
    location = S3Location("models", "p")
    return S3ArtifactStore(
        client, location, LocalArtifactStore(tmp_path / "cache"), sleep=sleeps.append, **others
    )


def test_failures_worth_retrying_are_retried_a_bounded_number_of_times(tmp_path: Path) -> None:
    key = object_key("p", SHA)
    timeout = ReadTimeoutError(endpoint_url="https://s3.local")
    client = ScriptedS3({key: BLOB}, [EndpointConnectionError(endpoint_url="https://s3.local"), timeout])
    sleeps: list[float] = []
    assert _scripted(tmp_path, client, sleeps).get(SHA) == BLOB
    assert (client.calls, sleeps) == (["get", "get", "get"], [0.5, 1.0])

    failures: list[Exception] = [_client_error("InternalError", 500) for _ in range(3)]
    client, sleeps = ScriptedS3({key: BLOB}, failures), list[float]()
    with pytest.raises(ArtifactUnavailable, match="fetching: 3 attempts failed; last: InternalError 500"):
        _scripted(tmp_path / "other", client, sleeps).get(SHA)
    assert (client.calls, sleeps) == (["get", "get", "get"], [0.5, 1.0])
    assert not LocalArtifactStore(tmp_path / "other" / "cache").has(SHA)


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        (_client_error("InvalidAccessKeyId", 403), "does not know this access key id: check the credentials"),
        (_client_error("SignatureDoesNotMatch", 403), "check the secret access key"),
        (_client_error("AccessDenied", 403), "access denied"),
        (_client_error("NoSuchBucket", 404), "the bucket does not exist"),
        (_client_error("InvalidArgument", 400), "refused: InvalidArgument says the server"),
        (SSLError(endpoint_url="https://s3.local", error="CERTIFICATE_VERIFY_FAILED"), "check ca_file"),
    ],
)
def test_a_refusal_fails_at_once_saying_what_to_check(
    tmp_path: Path, failure: Exception, message: str
) -> None:
    client, sleeps = ScriptedS3({}, [failure]), list[float]()
    with pytest.raises(ArtifactUnavailable, match=message) as refused:
        _scripted(tmp_path, client, sleeps).get(SHA)
    assert (client.calls, sleeps) == (["get"], [])
    assert refused.value.reason == "artifact_unavailable"
    assert isinstance(refused.value.__cause__, (ClientError, SSLError))  # kept for the log, not the message


def test_bodies_that_are_too_long_or_cut_short_are_not_taken(tmp_path: Path) -> None:
    key = object_key("p", SHA)
    client, sleeps = ScriptedS3({key: BLOB}, []), list[float]()
    with pytest.raises(ArtifactUnavailable, match="over the 1000 limit"):
        _scripted(tmp_path, client, sleeps, max_bytes=1000).get(SHA)
    client, sleeps = ScriptedS3({key: BLOB}, [], length=len(BLOB) + 10), []  # the connection drops
    with pytest.raises(ArtifactUnavailable, match=f"closed after {len(BLOB)} of {len(BLOB) + 10} bytes"):
        _scripted(tmp_path, client, sleeps).get(SHA)
    assert client.read_bodies == 3
    assert not LocalArtifactStore(tmp_path / "cache").has(SHA)


def test_put_stores_once_and_repairs_a_corrupt_object(tmp_path: Path) -> None:
    key = object_key("p", SHA)
    client, sleeps = ScriptedS3({}, []), list[float]()
    store = _scripted(tmp_path, client, sleeps)
    assert store.put(BLOB) == SHA
    assert store.put(BLOB) == SHA
    assert client.calls == ["get", "put", "get"]  # the second put found it, verified it, left it
    client.objects[key] = b"rot"
    client.calls.clear()
    assert store.put(BLOB) == SHA
    assert (client.calls, client.objects[key]) == (["get", "put"], BLOB)
    assert store.has(SHA)
    assert not store.has(sha256_hex(b"other"))
