"""Writes the JSON schema of a KubeRay CRD (its v1 openAPIV3Schema, descriptions dropped) that
tests/test_infra_manifests.py validates infra/k8s/raycluster.yaml against, offline.

    curl -LO https://raw.githubusercontent.com/ray-project/kuberay/v1.7.0/helm-chart/kuberay-operator/crds/ray.io_rayclusters.yaml
    python infra/k8s/schemas/vendor-kuberay-crd.py ray.io_rayclusters.yaml v1.7.0 \
        > infra/k8s/schemas/raycluster-ray.io-v1.json

What you edit: nothing; rerun it when you move to another KubeRay release."""

from __future__ import annotations

import json
import sys
from typing import Any

import yaml


def strip(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: strip(v) for k, v in node.items() if not (k == "description" and isinstance(v, str))
        }
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def main() -> None:
    path, release = sys.argv[1], sys.argv[2]
    with open(path) as handle:
        crd = yaml.safe_load(handle)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = strip(version["schema"]["openAPIV3Schema"])
    schema["$comment"] = (
        f"{crd['spec']['group']}/v1 {crd['spec']['names']['kind']}: the openAPIV3Schema of KubeRay "
        f"{release} helm-chart/kuberay-operator/crds/{path.rsplit('/', 1)[-1]}, descriptions "
        "removed (infra/k8s/schemas/vendor-kuberay-crd.py)"
    )
    json.dump(schema, sys.stdout, sort_keys=True, separators=(",", ":"))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
