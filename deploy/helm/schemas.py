"""Lay out the JSON schemas kubeconform needs to validate the chart offline, from registry packages.

- Kubernetes' own kinds: the ``kubernetes-validate`` wheel (PyPI) bundles per-version schemas whose
  ``$ref``s point into a shared ``_definitions.json``; each resource kind is written standalone here
  (its definitions inlined under ``$defs``), as kubeconform loads one file per kind.
- Custom resources: the ``openAPIV3Schema`` of each version of each CRD YAML given (KEDA's, from its
  Go module's ``config/crd/bases``).

Files are named as kubeconform's ``{{ .ResourceKind }}{{ .KindSuffix }}.json`` expects:
``deployment-apps-v1.json``, ``service-v1.json``, ``scaledobject-keda-v1alpha1.json``.

    python deploy/helm/schemas.py OUT --k8s-wheel WHEEL --k8s-version v1.33.0 [--crd FILE ...]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import zipfile
from pathlib import Path
from typing import Any, Final

import yaml

DEFINITIONS: Final = "_definitions.json"
"""The shared definitions file of each version folder in the wheel."""
SCHEMA_ROOT: Final = "kubernetes_validate/kubernetes-json-schema"
"""Where the wheel keeps its version folders."""
_SHARED_REF: Final = re.compile(r"^/api/_definitions\.json#/\$defs/(.+)$")
_LOCAL_REF: Final = re.compile(r"^#/\$defs/(.+)$")


def _refs(node: Any) -> set[str]:
    """Every definition name a schema node refers to (shared or local)."""
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            match = _SHARED_REF.match(ref) or _LOCAL_REF.match(ref)
            if match:
                found.add(match.group(1))
        for value in node.values():
            found |= _refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= _refs(value)
    return found


def _localise(node: Any) -> Any:
    """The node with shared references turned into local ``#/$defs/...`` ones."""
    if isinstance(node, dict):
        out = {key: _localise(value) for key, value in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str):
            match = _SHARED_REF.match(ref)
            if match:
                out["$ref"] = f"#/$defs/{match.group(1)}"
        return out
    if isinstance(node, list):
        return [_localise(value) for value in node]
    return node


def standalone(schema: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with every definition it reaches inlined under ``$defs``."""
    wanted: set[str] = set()
    pending = _refs(schema)
    while pending:
        name = pending.pop()
        if name in wanted or name not in definitions:
            continue
        wanted.add(name)
        pending |= _refs(definitions[name]) - wanted
    out: dict[str, Any] = _localise(schema)
    out.pop("$id", None)
    out["$defs"] = {name: _localise(definitions[name]) for name in sorted(wanted)}
    return out


def write_kubernetes(wheel: Path, version: str, out: Path) -> int:
    """Write every resource kind of ``version`` (e.g. ``v1.33.0``, strict) standalone; the count."""
    folder = f"{SCHEMA_ROOT}/{version}-local-strict/"
    count = 0
    with zipfile.ZipFile(wheel) as archive:
        definitions = json.loads(archive.read(folder + DEFINITIONS))["$defs"]
        for name in archive.namelist():
            if not name.startswith(folder) or name.endswith(DEFINITIONS) or not name.endswith(".json"):
                continue
            schema = json.loads(archive.read(name))
            if "x-kubernetes-group-version-kind" not in schema:
                continue  # a part of a resource, not a resource
            (out / name.removeprefix(folder)).write_text(json.dumps(standalone(schema, definitions)))
            count += 1
    if count == 0:
        raise SystemExit(f"{wheel}: no schemas under {folder}")
    return count


def write_crds(paths: list[Path], out: Path) -> list[str]:
    """Write each served version of each CRD's schema; the file names written."""
    written: list[str] = []
    for path in paths:
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if not isinstance(document, dict) or document.get("kind") != "CustomResourceDefinition":
                continue
            spec = document["spec"]
            kind = spec["names"]["kind"].lower()
            group = spec["group"].split(".")[0]
            for version in spec["versions"]:
                schema = version.get("schema", {}).get("openAPIV3Schema")
                if schema is None:
                    continue
                name = f"{kind}-{group}-{version['name']}.json"
                (out / name).write_text(json.dumps(schema))
                written.append(name)
    return written


def main(argv: list[str]) -> int:
    """Parse the arguments, write the schemas, say how many."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--k8s-wheel", type=Path, required=True)
    parser.add_argument("--k8s-version", default="v1.33.0")
    parser.add_argument("--crd", type=Path, action="append", default=[])
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    count = write_kubernetes(args.k8s_wheel, args.k8s_version, args.out)
    crds = write_crds(args.crd, args.out)
    print(f"{count} Kubernetes {args.k8s_version} kinds, {len(crds)} CRD schemas in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
