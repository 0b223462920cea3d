"""The Helm chart (deploy/helm/edgestream): ``helm lint``, ``helm template`` with the default and the k3s
values, every rendered manifest validated offline against Kubernetes' and KEDA's schemas
(kubeconform), and what the rendered resources say: a worker, scaler, budget and gateway per region of
the catalogue, replicas capped at the ingest partitions, each workload mounting only its own identity.

helm's lint and template are those of ``chartcheck`` (deploy/helm/chartcheck: Helm's own library
packages, without the CLI's cluster and registry clients, so that it builds in the suite's time). It,
kubeconform and the schemas come from ``deploy/helm/install-tools.sh``: ``make test`` starts it in the
background, and these tests, which the suite runs last (the ``chart_tools`` marker), wait for it; each
test that needs a tool skips, saying which and why, when it could not be built.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from edgestream.cli import app
from edgestream.pipeline.settings import DEFAULT_REGIONS
from edgestream.topics import strimzi
from edgestream.topics.catalogue import all_topics, edge_group, region_topics
from tests.background_build import BackgroundBuild

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "deploy/helm/edgestream"
K3S_VALUES = CHART / "values-k3s.yaml"
TOOLS = Path(os.environ.get("EDGESTREAM_K8S_TOOLS", Path.home() / ".cache/edgestream/k8s-tools"))
SCHEMAS = TOOLS / "schemas"
BUILD_WAIT_S = 900.0
"""How long the tests wait for install-tools.sh's background build (``make test`` starts it): a cold
one takes 3-4 min on 2 busy cores."""
BUILD = BackgroundBuild(TOOLS, "the chart tools are", BUILD_WAIT_S)
NOT_IN_REGISTRIES = ("KafkaTopic", "KafkaUser")
"""Kinds whose schemas no registry reachable here provides (Strimzi's CRDs); test_strimzi.py checks them."""
REGIONS = [r.name for r in DEFAULT_REGIONS]
Manifest = dict[str, Any]

pytestmark = [pytest.mark.chart_tools, pytest.mark.timeout(BUILD_WAIT_S + 300)]
"""Run last, and allowed to wait for the build beyond the suite's 300 s per test (pytest-timeout counts
the fixture's wait in the first test)."""


@pytest.fixture(scope="module", autouse=True)
def _tools_built() -> None:
    """Wait (bounded) for the build that ``make test`` started in the background, so that its tools
    are used rather than skipped while it is still compiling."""
    BUILD.wait()


def _log_tail() -> str:
    return BUILD.log_tail()


def _tool(name: str) -> str:
    found = TOOLS / "bin" / name
    if found.is_file():
        return str(found)
    on_path = shutil.which(name)
    if on_path is None:
        pytest.skip(
            f"{name} is not installed: run deploy/helm/install-tools.sh (make helm-tools); {_log_tail()}"
        )
    return on_path


def _helm(*args: str) -> subprocess.CompletedProcess[str]:
    """``helm lint`` or ``helm template`` with these arguments, as chartcheck runs them."""
    return subprocess.run(
        [_tool("chartcheck"), *args], capture_output=True, text=True, timeout=120, check=False
    )


def render(*args: str) -> list[Manifest]:
    """``helm template`` of the chart with these extra arguments, as manifests."""
    done = _helm("template", "es", str(CHART), *args)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def by_component(manifests: list[Manifest], kind: str, component: str) -> dict[str, Manifest]:
    """Manifests of a kind and component, by region (or by name where they have none)."""
    found = {}
    for m in of_kind(manifests, kind):
        labels = m["metadata"].get("labels", {})
        if labels.get("app.kubernetes.io/component") == component:
            found[labels.get("edgestream.io/region", m["metadata"]["name"])] = m
    return found


VALUES = pytest.mark.parametrize("values", [[], ["-f", str(K3S_VALUES)]], ids=["default", "k3s"])


@VALUES
def test_helm_lint(values: list[str]) -> None:
    done = _helm("lint", "--strict", str(CHART), *values)
    assert done.returncode == 0, done.stdout + done.stderr


def test_lint_fails_a_broken_chart(tmp_path: Path) -> None:
    """The lint can fail: an unclosed action in a template is an error."""
    broken = tmp_path / "edgestream"
    shutil.copytree(CHART, broken)
    (broken / "templates" / "broken.yaml").write_text("kind: ConfigMap\nname: {{ .Values.nope\n")
    done = _helm("lint", "--strict", str(broken))
    assert done.returncode != 0
    assert "unclosed action started at edgestream/templates/broken.yaml" in done.stdout
    assert "1 chart(s) failed" in done.stderr


@VALUES
def test_every_rendered_manifest_is_valid_offline(values: list[str], tmp_path: Path) -> None:
    kubeconform = _tool("kubeconform")
    if not (SCHEMAS / "scaledobject-keda-v1alpha1.json").is_file():
        pytest.skip(f"no schemas in {SCHEMAS}: run deploy/helm/install-tools.sh (make helm-tools)")
    rendered = tmp_path / "rendered.yaml"
    manifests = render(*values)
    rendered.write_text(yaml.safe_dump_all(manifests))
    results = _kubeconform(kubeconform, rendered)
    statuses = {(r["kind"], r["status"]) for r in results}
    assert not [r for r in results if r["status"] not in ("statusValid", "statusSkipped")], results
    assert {kind for kind, status in statuses if status == "statusSkipped"} <= set(NOT_IN_REGISTRIES)
    valid = {kind for kind, status in statuses if status == "statusValid"}
    assert {"Deployment", "Service", "ScaledObject", "TriggerAuthentication"} <= valid
    assert len(results) == len(manifests)


def _kubeconform(kubeconform: str, path: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        [
            kubeconform,
            "-strict",
            "-output",
            "json",
            "-verbose",
            "-schema-location",
            str(SCHEMAS / "{{ .ResourceKind }}{{ .KindSuffix }}.json"),
            "-skip",
            ",".join(NOT_IN_REGISTRIES),
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    results: list[dict[str, Any]] = json.loads(done.stdout)["resources"]
    return results


def test_the_schemas_refuse_a_wrong_manifest(tmp_path: Path) -> None:
    """The validation can fail: an unknown field in a Deployment and a string where a ScaledObject
    wants a number are both reported invalid."""
    kubeconform = _tool("kubeconform")
    if not (SCHEMAS / "scaledobject-keda-v1alpha1.json").is_file():
        pytest.skip(f"no schemas in {SCHEMAS}: run deploy/helm/install-tools.sh (make helm-tools)")
    manifests = render()
    deployment = of_kind(manifests, "Deployment")[0]
    deployment["spec"]["replicaz"] = 2
    scaled = of_kind(manifests, "ScaledObject")[0]
    scaled["spec"]["maxReplicaCount"] = "six"
    path = tmp_path / "wrong.yaml"
    path.write_text(yaml.safe_dump_all([deployment, scaled]))
    assert {r["status"] for r in _kubeconform(kubeconform, path)} == {"statusInvalid"}


def test_a_worker_scaler_budget_and_gateway_per_region() -> None:
    manifests = render()
    workers = by_component(manifests, "Deployment", "edge-worker")
    scalers = {m["metadata"]["labels"]["edgestream.io/region"]: m for m in of_kind(manifests, "ScaledObject")}
    budgets = by_component(manifests, "PodDisruptionBudget", "edge-worker")
    gateways = by_component(manifests, "Deployment", "gateway")
    services = by_component(manifests, "Service", "gateway")
    for found in (workers, scalers, budgets, gateways, services):
        assert sorted(found) == sorted(REGIONS)
    for region in REGIONS:
        worker = workers[region]["spec"]["template"]["spec"]["containers"][0]
        assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert worker["livenessProbe"]["httpGet"]["path"] == "/livez"
        env = {e["name"]: e.get("value") for e in worker["env"]}
        assert env["EDGESTREAM_WORKER_REGION"] == region
        assert "replicas" not in workers[region]["spec"], "KEDA owns the replica count"
        spec = scalers[region]["spec"]
        assert spec["scaleTargetRef"]["name"] == workers[region]["metadata"]["name"]
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "kafka"
        assert trigger["metadata"]["consumerGroup"] == edge_group(region)
        ingest = [t for t in region_topics(region) if t.kind is not None]
        assert spec["maxReplicaCount"] == sum(t.spec.partitions for t in ingest)
        assert (
            spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"][
                "stabilizationWindowSeconds"
            ]
            >= 300
        )
        gateway = gateways[region]["spec"]["template"]["spec"]["containers"][0]
        assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert gateways[region]["spec"]["template"]["spec"]["containers"][0]["args"][:3] == [
            "gateway",
            "--region",
            region,
        ]


def test_replicas_are_capped_and_a_lag_in_seconds_trigger_can_be_added() -> None:
    manifests = render(
        "--set", "edge.autoscaling.maxReplicas=2", "--set", "edge.autoscaling.prometheus.enabled=true"
    )
    for scaled in of_kind(manifests, "ScaledObject"):
        assert scaled["spec"]["maxReplicaCount"] == 2
        region = scaled["metadata"]["labels"]["edgestream.io/region"]
        prometheus = [t for t in scaled["spec"]["triggers"] if t["type"] == "prometheus"]
        assert (
            prometheus[0]["metadata"]["query"] == f'max(edgestream_consumer_lag_seconds{{region="{region}"}})'
        )
    # Above the partitions, the cap is the partitions.
    assert {
        s["spec"]["maxReplicaCount"]
        for s in of_kind(render("--set", "edge.autoscaling.maxReplicas=50"), "ScaledObject")
    } == {6}
    refused = _helm(
        "template", "es", str(CHART), "--set", "edge.autoscaling.enabled=true", "--set", "edge.replicas=7"
    )
    assert refused.returncode != 0
    assert "ingest partitions" in refused.stderr


SECRET_ROLES = {"kafka-identity", "kafka-ca", "region-keys", "registry", "server-tls", "clients-ca"}


S3_VALUES = (
    *("--set", "registry.enabled=false", "--set", "registry.s3.url=s3://models/edge"),
    *("--set", "registry.s3.endpoint=https://minio.example:9000", "--set", "registry.s3.region=eu-west-1"),
    *("--set", "registry.s3.addressingStyle=path", "--set", "registry.s3.credentialsSecret=edge-s3"),
    *("--set", "registry.s3.caConfigMap=edge-s3-ca"),
)
"""Workers reading artifacts from a MinIO bucket, with keys from a Secret and a private CA."""


def test_workers_can_read_artifacts_from_an_s3_bucket_instead(tmp_path: Path) -> None:
    """With registry.s3.url, each worker reads the bucket (no artifact server, no server CA), its keys
    from the Secret by reference (never a value in the manifest), the CA from its ConfigMap."""
    manifests = render(*S3_VALUES)
    assert not by_component(manifests, "Deployment", "registry")
    workers = by_component(manifests, "Deployment", "edge-worker").values()
    assert workers
    for worker in workers:
        (container,) = worker["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env["EDGESTREAM_WORKER_REGISTRY"]["value"] == "true"
        assert env["EDGESTREAM_WORKER_REGISTRY_S3__URL"]["value"] == "s3://models/edge"
        assert env["EDGESTREAM_WORKER_REGISTRY_S3__ENDPOINT_URL"]["value"] == "https://minio.example:9000"
        assert env["EDGESTREAM_WORKER_REGISTRY_S3__REGION"]["value"] == "eu-west-1"
        assert env["EDGESTREAM_WORKER_REGISTRY_S3__ADDRESSING_STYLE"]["value"] == "path"
        for name, key in (("ACCESS_KEY_ID", "access-key-id"), ("SECRET_ACCESS_KEY", "secret-access-key")):
            var = env[f"EDGESTREAM_WORKER_REGISTRY_S3__{name}"]
            assert "value" not in var
            assert var["valueFrom"]["secretKeyRef"] == {"name": "edge-s3", "key": key}
        assert env["EDGESTREAM_WORKER_REGISTRY_S3__CA_FILE"]["value"] == "/etc/edgestream/s3-ca/ca.crt"
        assert "EDGESTREAM_WORKER_REGISTRY_URL" not in env  # one source of artifacts per worker
        assert "EDGESTREAM_WORKER_REGISTRY_CA_FILE" not in env
        volumes = {v["name"]: v for v in worker["spec"]["template"]["spec"]["volumes"]}
        assert volumes["s3-ca"]["configMap"]["name"] == "edge-s3-ca"
        trust = volumes["registry-trust"]["configMap"]  # the trusted keys still; no server CA needed
        assert {i["path"] for i in trust["items"]} == {"trusted-keys.json"}
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["s3-ca"]["mountPath"] == "/etc/edgestream/s3-ca"
        assert mounts["s3-ca"]["readOnly"]
    if (SCHEMAS / "scaledobject-keda-v1alpha1.json").is_file():  # else the test above says why
        path = tmp_path / "s3.yaml"
        path.write_text(yaml.safe_dump_all(manifests))
        results = _kubeconform(_tool("kubeconform"), path)
        assert not [r for r in results if r["status"] not in ("statusValid", "statusSkipped")], results

    keyless = render("--set", "registry.s3.url=s3://models")  # the SDK's default chain (a pod role)
    for worker in by_component(keyless, "Deployment", "edge-worker").values():
        env = _env(worker)
        assert env["EDGESTREAM_WORKER_REGISTRY_S3__URL"] == "s3://models"
        assert not {n for n in env if n.startswith("EDGESTREAM_WORKER_REGISTRY_S3__")} - {
            "EDGESTREAM_WORKER_REGISTRY_S3__URL",
            "EDGESTREAM_WORKER_REGISTRY_S3__REGION",
        }
        assert "s3-ca" not in {v["name"] for v in worker["spec"]["template"]["spec"]["volumes"]}


def _secrets(deployment: Manifest) -> dict[str, str]:
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    return {v["name"]: v["secret"]["secretName"] for v in volumes if "secret" in v}


def test_each_workload_mounts_only_its_own_identity() -> None:
    manifests = render()
    catalogue = strimzi.chart_catalogue(REGIONS)["catalogue"]
    users = {u["metadata"]["name"] for u in catalogue["kafkaUsers"]}
    ca = "edgestream-cluster-ca-cert"
    for region in catalogue["regions"]:
        name = region["name"]
        worker = _secrets(by_component(manifests, "Deployment", "edge-worker")[name])
        assert worker == {
            "kafka-identity": region["edgeUser"],
            "kafka-ca": ca,
            "region-keys": f"edgestream-keys-{name}",
        }
        gateway = _secrets(by_component(manifests, "Deployment", "gateway")[name])
        assert gateway == {
            "kafka-identity": region["gatewayUser"],
            "kafka-ca": ca,
            "server-tls": f"edgestream-gateway-tls-{name}",
        }
    (aggregator,) = by_component(manifests, "Deployment", "aggregator").values()
    assert _secrets(aggregator) == {"kafka-identity": catalogue["aggregatorUser"], "kafka-ca": ca}
    for rollout in by_component(manifests, "Deployment", "rollout-controller").values():
        assert _secrets(rollout) == {
            "kafka-identity": catalogue["adminUser"],
            "kafka-ca": ca,
            "registry": "edgestream-registry",
        }
    (registry,) = by_component(manifests, "Deployment", "registry").values()
    assert _secrets(registry) == {  # it serves TLS and speaks no Kafka: no KafkaUser of its own
        "server-tls": "edgestream-registry-tls",
        "clients-ca": "edgestream-clients-ca-cert",
    }
    every = [d for d in of_kind(manifests, "Deployment")]
    assert all(set(_secrets(d)) <= SECRET_ROLES for d in every)
    assert {_secrets(d)["kafka-identity"] for d in every if d is not registry} <= users
    for auth in of_kind(manifests, "TriggerAuthentication"):
        region = auth["metadata"]["labels"]["edgestream.io/region"]
        assert {ref["name"] for ref in auth["spec"]["secretTargetRef"]} == {f"edge-{region}", ca}


def test_the_strimzi_resources_are_the_catalogues_labelled_for_the_cluster() -> None:
    manifests = render("--set", "strimzi.cluster=edge-kafka")
    topics = of_kind(manifests, "KafkaTopic")
    users = of_kind(manifests, "KafkaUser")
    assert sorted(t["spec"]["topicName"] for t in topics) == sorted(t.name for t in all_topics(REGIONS))
    generated = strimzi.chart_catalogue(REGIONS)["catalogue"]
    assert [u["spec"] for u in users] == [u["spec"] for u in generated["kafkaUsers"]]
    for resource in topics + users:
        assert resource["metadata"]["labels"]["strimzi.io/cluster"] == "edge-kafka"


def test_k3s_values_one_replica_per_partition_and_no_cloud_side() -> None:
    manifests = render("-f", str(K3S_VALUES))
    for topic in of_kind(manifests, "KafkaTopic"):
        assert topic["spec"]["replicas"] == 1
        assert topic["spec"]["config"]["min.insync.replicas"] == "1"
    assert not by_component(manifests, "Deployment", "aggregator")
    assert not by_component(manifests, "Deployment", "rollout-controller")
    assert {s["spec"]["maxReplicaCount"] for s in of_kind(manifests, "ScaledObject")} == {2}


def test_gpu_requests_are_a_value_per_region() -> None:
    manifests = render("--set", "edge.regions.eu-west.gpu=1")
    workers = by_component(manifests, "Deployment", "edge-worker")
    for region, worker in workers.items():
        pod = worker["spec"]["template"]["spec"]
        limits = pod["containers"][0]["resources"]["limits"]
        env = {e["name"] for e in pod["containers"][0]["env"]}
        if region == "eu-west":
            assert limits["nvidia.com/gpu"] == 1
            assert "EDGESTREAM_WORKER_PROVIDERS" in env
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
                "tolerations"
            ]
        else:
            assert "nvidia.com/gpu" not in limits
            assert "EDGESTREAM_WORKER_PROVIDERS" not in env


def test_an_override_for_a_region_outside_the_catalogue_is_refused() -> None:
    done = _helm("template", "es", str(CHART), "--set", "edge.regions.mars.gpu=1")
    assert done.returncode != 0
    assert "not a region of the catalogue" in done.stderr


def test_a_generated_catalogue_for_other_regions_replaces_the_charts(tmp_path: Path) -> None:
    """`edgestream k8s generate --region ... --out FILE`, then `-f FILE`: the chart follows it."""
    values = tmp_path / "catalogue.yaml"
    made = CliRunner().invoke(
        app, ["k8s", "generate", "-r", "sa-east-1", "--replicas", "1", "--out", str(values)]
    )
    assert made.exit_code == 0, made.output
    manifests = render("-f", str(values))
    assert sorted(by_component(manifests, "Deployment", "edge-worker")) == ["sa-east-1"]
    assert sorted(t["spec"]["topicName"] for t in of_kind(manifests, "KafkaTopic")) == sorted(
        t.name for t in all_topics(["sa-east-1"])
    )


SETTINGS = {
    "EDGESTREAM_WORKER_": "edgestream.workers.edge.settings:WorkerSettings",
    "EDGESTREAM_REGISTRY_SERVER_": "edgestream.workers.registry_server:RegistryServerSettings",
    "EDGESTREAM_AGGREGATOR_": "edgestream.workers.aggregator.app:AggregatorSettings",
    "EDGESTREAM_GATEWAY_": "edgestream.workers.gateway.settings:GatewaySettings",
    "EDGESTREAM_KAFKA_": "edgestream.pipeline.settings:KafkaEnv",
}
"""The settings class each variable prefix of the chart configures."""


def _field_exists(model: Any, path: list[str]) -> bool:
    fields = model.model_fields
    if path[0] not in fields:
        return False
    if len(path) == 1:
        return True
    annotation = fields[path[0]].annotation
    nested = [a for a in typing.get_args(annotation) if hasattr(a, "model_fields")]  # `X | None`
    return _field_exists(nested[0] if nested else annotation, path[1:])


def test_every_variable_the_chart_sets_is_a_setting() -> None:
    """A misspelt EDGESTREAM_* variable would be ignored by pydantic-settings: each names a field."""
    import importlib

    manifests = render("--set", "edge.autoscaling.enabled=false") + render(*S3_VALUES)
    containers = [
        c
        for d in of_kind(manifests, "Deployment")
        for c in d["spec"]["template"]["spec"]["containers"]
        + d["spec"]["template"]["spec"].get("initContainers", [])
    ]
    names = {e["name"] for c in containers for e in c.get("env", [])}
    checked = 0
    for name in sorted(names):
        prefix = next(p for p in SETTINGS if name.startswith(p))
        module, cls = SETTINGS[prefix].split(":")
        try:
            model = getattr(importlib.import_module(module), cls)
        except ImportError:
            continue  # the gateway before issue 16's branch is merged
        assert _field_exists(model, name.removeprefix(prefix).lower().split("__")), name
        checked += 1
    assert checked >= 15


def _env(deployment: Manifest) -> dict[str, str]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def test_workers_follow_the_registry_and_fetch_from_the_charts_artifact_server() -> None:
    manifests = render()
    (service,) = [s for s in of_kind(manifests, "Service") if s["metadata"]["name"] == "es-registry"]
    (port,) = service["spec"]["ports"]
    for worker in by_component(manifests, "Deployment", "edge-worker").values():
        env = _env(worker)
        assert env["EDGESTREAM_WORKER_REGISTRY"] == "true"
        assert env["EDGESTREAM_WORKER_REGISTRY_URL"] == f"https://es-registry:{port['port']}"
        volumes = {v["name"]: v for v in worker["spec"]["template"]["spec"]["volumes"]}
        trust = volumes["registry-trust"]["configMap"]  # public keys and a CA: no secret
        assert {i["path"] for i in trust["items"]} == {"trusted-keys.json", "registry-ca.crt"}
        assert env["EDGESTREAM_WORKER_REGISTRY_HOME"] == "/etc/edgestream/registry"
    (registry,) = by_component(manifests, "Deployment", "registry").values()
    mounts = registry["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert all(m["readOnly"] for m in mounts)  # it serves; it never writes the store
    assert of_kind(manifests, "PersistentVolumeClaim")

    elsewhere = render("--set", "registry.enabled=false", "--set", "registry.url=https://models.example:8443")
    assert not by_component(elsewhere, "Deployment", "registry")
    for worker in by_component(elsewhere, "Deployment", "edge-worker").values():
        assert _env(worker)["EDGESTREAM_WORKER_REGISTRY_URL"] == "https://models.example:8443"

    local = render("--set", "edge.followRegistry=false")
    for worker in by_component(local, "Deployment", "edge-worker").values():
        assert _env(worker)["EDGESTREAM_WORKER_REGISTRY"] == "false"
        assert "EDGESTREAM_WORKER_REGISTRY_URL" not in _env(worker)

    nowhere = _helm("template", "es", str(CHART), "--set", "registry.enabled=false")
    assert nowhere.returncode != 0
    assert "edge.followRegistry needs registry.url" in nowhere.stderr
