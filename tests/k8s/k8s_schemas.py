"""Validation of rendered manifests against real schemas, offline.

- KubeRay kinds (RayJob, RayService, RayCluster): the ``openAPIV3Schema`` of the CRDs
  in tests/k8s/kuberay-crds (kuberay commit feeaf72), with unknown fields rejected
  the way ``kubectl apply`` (server-side strict field validation) rejects them.
  CEL rules (``x-kubernetes-validations``) are not evaluated.
- Core kinds (ConfigMap), and every embedded pod template as a ``v1 PodTemplate``:
  ``kubernetes-validate --strict`` for Kubernetes 1.35.0.
"""
from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

K8S_VERSION = "1.35.0"
# The KubeRay CRDs ship with the tests (tests/k8s/kuberay-crds, copied unchanged from kuberay, see its README);
# ATOLL_KUBERAY_CRDS points at another copy (e.g. a newer KubeRay release) to validate against.
CRD_DIR = Path(os.environ.get("ATOLL_KUBERAY_CRDS", Path(__file__).resolve().parent / "kuberay-crds"))
CRD_FILES = {"RayJob": "ray.io_rayjobs.yaml", "RayService": "ray.io_rayservices.yaml",
             "RayCluster": "ray.io_rayclusters.yaml"}


def _strict(schema):
    """Adds additionalProperties: false wherever a CRD object lists its properties (structural schema)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_schema(kind: str) -> dict:
    path = CRD_DIR / CRD_FILES[kind]
    if not path.is_file():
        raise FileNotFoundError(f"KubeRay CRD {path} is missing; restore tests/k8s/kuberay-crds from git or set ATOLL_KUBERAY_CRDS to a kuberay-crds folder")
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    # the API server checks metadata itself; the CRD schema leaves it open
    schema["properties"]["metadata"] = {"type": "object"}
    return schema


def _pod_templates(obj: dict) -> list[dict]:
    spec = obj["spec"]
    cluster = spec.get("rayClusterSpec") or spec.get("rayClusterConfig") or spec
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    return [g["template"] for g in groups]


def validate(obj: dict) -> list[str]:
    """Problems of one manifest (empty: valid). Unknown kinds are a problem too."""
    kind = obj.get("kind")
    where = f"{kind} {obj.get('metadata', {}).get('name')}"
    problems = []
    if kind in CRD_FILES:
        v = jsonschema.Draft7Validator(crd_schema(kind))
        problems += [f"{where}: {'.'.join(map(str, e.path))}: {e.message}" for e in v.iter_errors(obj)]
        for i, tpl in enumerate(_pod_templates(obj)):
            pod = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"t{i}"}, "template": tpl}
            problems += _core(pod, f"{where} pod template {i}")
    elif kind in ("ConfigMap", "Secret", "Service"):
        problems += _core(obj, where)
    else:
        problems.append(f"{where}: no schema known for this kind")
    return problems


def _core(obj: dict, where: str) -> list[str]:
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{where}: {'.'.join(map(str, e.path))}: {e.message}"]
    return []
