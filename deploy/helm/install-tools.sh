#!/usr/bin/env bash
# Tools for the chart's tests, built from the package registries into a cache (quiet when present; one
# line when something is built, and a line for whatever fails):
#   chartcheck    deploy/helm/chartcheck: `helm lint` and `helm template` from Helm's library packages
#                 (Go module helm.sh/helm/v4), 2-2.5 min cold on 2 cores where the whole helm CLI takes 4-9
#   kubeconform   Go module github.com/yannh/kubeconform
#   schemas       Kubernetes' JSON schemas from the kubernetes-validate wheel (PyPI), made standalone,
#                 and KEDA's CRD schemas from its Go module's config/crd/bases (deploy/helm/schemas.py)
# Strimzi's CRDs are in no registry reachable here (docs/kubernetes.md), so KafkaTopic and KafkaUser
# are checked by tests/topics/test_strimzi.py, not by kubeconform.
# Whatever cannot be had is reported in one line and skipped; the tests that need it skip and say why.
#   --background  `make test`: start the build niced in the background and return at once; the chart
#                 tests, which run last, wait for it (its pid is in $EDGESTREAM_K8S_TOOLS/building)
#   EDGESTREAM_K8S_TOOLS  the cache (default ~/.cache/edgestream/k8s-tools); tests read the same variable
#   PYTHON                the interpreter with PyYAML (default .venv/bin/python, else python3)
set -uo pipefail

KUBECONFORM_VERSION=v0.8.0
K8S_VALIDATE_VERSION=1.37.0
K8S_SCHEMA_VERSION=v1.33.0
KEDA_VERSION=v2.21.1

here=$(cd "$(dirname "$0")" && pwd)
tools=${EDGESTREAM_K8S_TOOLS:-$HOME/.cache/edgestream/k8s-tools}
python=${PYTHON:-$here/../../.venv/bin/python}
[ -x "$python" ] || python=python3
mkdir -p "$tools/bin" "$tools/dl" "$tools/logs"

# chartcheck is rebuilt when its source changes: the stamp is named by the hash of its files.
chartcheck_stamp() {
  echo "$tools/bin/.chartcheck-$(cat "$here"/chartcheck/go.mod "$here"/chartcheck/go.sum "$here"/chartcheck/*.go \
    | sha256sum | cut -c1-16)"
}
kubeconform_stamp() { echo "$tools/bin/.kubeconform-$KUBECONFORM_VERSION"; }
schemas_stamp() { echo "$tools/schemas/.$K8S_SCHEMA_VERSION-$K8S_VALIDATE_VERSION-keda-$KEDA_VERSION"; }

missing() {  # what is not built yet, in the order it is built
  local todo=()
  [ -x "$tools/bin/chartcheck" ] && [ -e "$(chartcheck_stamp)" ] || todo+=(chartcheck)
  [ -x "$tools/bin/kubeconform" ] && [ -e "$(kubeconform_stamp)" ] || todo+=(kubeconform)
  [ -e "$(schemas_stamp)" ] || todo+=(schemas)
  echo "${todo[*]}"
}

chartcheck() {
  local stamp
  stamp=$(chartcheck_stamp)
  [ -x "$tools/bin/chartcheck" ] && [ -e "$stamp" ] && return 0
  command -v go >/dev/null || { echo "chartcheck: no Go here; the chart tests skip"; return 1; }
  if (cd "$here/chartcheck" && GOFLAGS=-buildvcs=false go build -trimpath -o "$tools/bin/chartcheck" .) \
      >"$tools/logs/chartcheck.log" 2>&1; then
    rm -f "$tools"/bin/.chartcheck-* && touch "$stamp"
  else
    echo "chartcheck: the build failed (see $tools/logs/chartcheck.log); the chart tests skip"
    tail -3 "$tools/logs/chartcheck.log"
    return 1
  fi
}

kubeconform() {
  local stamp
  stamp=$(kubeconform_stamp)
  [ -x "$tools/bin/kubeconform" ] && [ -e "$stamp" ] && return 0
  command -v go >/dev/null || { echo "kubeconform: no Go here; the schema tests skip"; return 1; }
  if GOBIN="$tools/bin" GOFLAGS=-buildvcs=false \
      go install "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION" \
      >"$tools/logs/kubeconform.log" 2>&1; then
    touch "$stamp"
  else
    echo "kubeconform: the build failed (see $tools/logs/kubeconform.log); the schema tests skip"
    tail -3 "$tools/logs/kubeconform.log"
    return 1
  fi
}

schemas() {
  local stamp
  stamp=$(schemas_stamp)
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

what="the chart tools" tests="the chart tests"
todo_now() { missing; }
build_todo() { for step in "$@"; do "$step"; done; }
# shellcheck source=../lib/background-build.sh
. "$here/../lib/background-build.sh"
background_build_main "$0" "${1:-}"
