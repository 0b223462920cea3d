#!/usr/bin/env bash
# Tools for the chart's tests, built from the package registries into a cache (quiet when present):
#   helm          Go module helm.sh/helm/v4, built with the machine's Go (about 9 min on 2 cores, once)
#   kubeconform   Go module github.com/yannh/kubeconform
#   schemas       Kubernetes' JSON schemas from the kubernetes-validate wheel (PyPI), made standalone,
#                 and KEDA's CRD schemas from its Go module's config/crd/bases (deploy/helm/schemas.py)
# Strimzi's CRDs are in no registry reachable here (docs/kubernetes.md), so KafkaTopic and KafkaUser
# are checked by tests/topics/test_strimzi.py, not by kubeconform.
# Whatever cannot be had is reported in one line and skipped; the tests that need it skip and say why.
#   EDGESTREAM_K8S_TOOLS  the cache (default ~/.cache/edgestream/k8s-tools); tests read the same variable
#   PYTHON                the interpreter with PyYAML (default .venv/bin/python, else python3)
set -uo pipefail

HELM_VERSION=v4.3.2
KUBECONFORM_VERSION=v0.8.0
K8S_VALIDATE_VERSION=1.37.0
K8S_SCHEMA_VERSION=v1.33.0
KEDA_VERSION=v2.21.1

here=$(cd "$(dirname "$0")" && pwd)
tools=${EDGESTREAM_K8S_TOOLS:-$HOME/.cache/edgestream/k8s-tools}
python=${PYTHON:-$here/../../.venv/bin/python}
[ -x "$python" ] || python=python3
mkdir -p "$tools/bin" "$tools/dl" "$tools/logs"

go_tool() {  # name module version
  local name=$1 module=$2 version=$3 stamp="$tools/bin/.$1-$3"
  [ -x "$tools/bin/$name" ] && [ -e "$stamp" ] && return 0
  command -v go >/dev/null || { echo "$name: no Go here; the tests that need it skip"; return 1; }
  echo "building $name $version from $module (log: $tools/logs/$name.log)"
  if GOBIN="$tools/bin" GOFLAGS=-buildvcs=false go install "$module@$version" >"$tools/logs/$name.log" 2>&1; then
    touch "$stamp"
  else
    echo "$name: the build failed (see the log); the tests that need it skip"; tail -3 "$tools/logs/$name.log"
    return 1
  fi
}

schemas() {
  local stamp="$tools/schemas/.$K8S_SCHEMA_VERSION-$K8S_VALIDATE_VERSION-keda-$KEDA_VERSION"
  [ -e "$stamp" ] && return 0
  local wheel="$tools/dl/kubernetes_validate-$K8S_VALIDATE_VERSION-py3-none-any.whl"
  if [ ! -e "$wheel" ]; then
    "$python" -m pip download --disable-pip-version-check --no-deps -q -d "$tools/dl" \
      "kubernetes-validate==$K8S_VALIDATE_VERSION" >"$tools/logs/schemas.log" 2>&1 \
      || { echo "schemas: cannot download kubernetes-validate (see $tools/logs/schemas.log)"; return 1; }
  fi
  local crds=() zip=""
  # The module needs a newer Go to build than this machine has, which `go mod download` reports (and
  # exits 1) after it has fetched the zip: only its files are wanted, so the zip's path is what counts.
  if command -v go >/dev/null; then
    zip=$(go mod download -json "github.com/kedacore/keda/v2@$KEDA_VERSION" 2>>"$tools/logs/schemas.log" \
          | "$python" -c 'import json,sys; print(json.load(sys.stdin).get("Zip", ""))' 2>>"$tools/logs/schemas.log")
  fi
  if [ -n "$zip" ] && [ -e "$zip" ]; then
    rm -rf "$tools/crds" && mkdir -p "$tools/crds"
    "$python" - "$zip" "$tools/crds" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in z.namelist():
        if "/config/crd/bases/keda.sh_" in name and name.endswith(("scaledobjects.yaml", "triggerauthentications.yaml")):
            open(f"{sys.argv[2]}/{name.rsplit('/', 1)[1]}", "wb").write(z.read(name))
PY
    for f in "$tools"/crds/*.yaml; do [ -e "$f" ] && crds+=(--crd "$f"); done
  else
    echo "schemas: KEDA's Go module could not be had; ScaledObject and TriggerAuthentication stay unchecked"
  fi
  rm -rf "$tools/schemas"
  "$python" "$here/schemas.py" "$tools/schemas" --k8s-wheel "$wheel" --k8s-version "$K8S_SCHEMA_VERSION" \
    "${crds[@]}" >>"$tools/logs/schemas.log" 2>&1 \
    || { echo "schemas: deploy/helm/schemas.py failed (see $tools/logs/schemas.log)"; return 1; }
  [ ${#crds[@]} -gt 0 ] && touch "$stamp"
  return 0
}

go_tool helm helm.sh/helm/v4/cmd/helm "$HELM_VERSION"
go_tool kubeconform github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_VERSION"
schemas
exit 0
