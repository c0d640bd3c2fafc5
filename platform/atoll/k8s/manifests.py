"""Rendered manifests -> the units the kubernetes target creates (one ConfigMap + one Ray object each)."""
from __future__ import annotations

import json
from dataclasses import dataclass

import yaml

from atoll.k8s.errors import KubernetesError

ROLE, ISLAND, ATTEMPT = "atoll.dev/role", "atoll.dev/island", "atoll.dev/attempt"
OUTPUTS = ("yaml", "json")


@dataclass(frozen=True)
class Unit:
    """What one island (or the router, or serving) needs in its namespace."""
    key: str                # the island name, "router" or "serve"
    role: str               # "island" | "router" | "serve"
    namespace: str
    config_map: dict
    ray_object: dict        # a RayJob (island, router) or RayService (serve)

    @property
    def name(self) -> str:
        return self.ray_object["metadata"]["name"]


def parse(text: str) -> list[dict]:
    """The documents of a multi-document YAML stream (empty ones dropped)."""
    return [d for d in yaml.safe_load_all(text) if d]


def units(docs: list[dict]) -> dict[str, Unit]:
    """Groups rendered objects by the atoll.dev/role and atoll.dev/island labels, in render order."""
    parts: dict[str, dict] = {}
    for doc in docs:
        labels = doc.get("metadata", {}).get("labels", {})
        role = labels.get(ROLE)
        if role is None:
            raise KubernetesError(f"rendered {doc.get('kind')} {doc.get('metadata', {}).get('name')!r} has no "
                                  f"{ROLE} label; the chart and atoll are out of step")
        key = labels.get(ISLAND, role)
        slot = parts.setdefault(key, {"role": role, "namespace": doc["metadata"].get("namespace", "default")})
        slot["config_map" if doc["kind"] == "ConfigMap" else "ray_object"] = doc
    out = {}
    for key, p in parts.items():
        if "config_map" not in p or "ray_object" not in p:
            raise KubernetesError(f"the chart rendered an incomplete unit {key!r} (needs a ConfigMap and a Ray object)")
        out[key] = Unit(key, p["role"], p["namespace"], p["config_map"], p["ray_object"])
    return out


def format_output(text: str, output: str) -> str:
    """``yaml``: helm's output unchanged; ``json``: a ``v1 List`` of the objects."""
    if output == "yaml":
        return text
    if output == "json":
        return json.dumps({"apiVersion": "v1", "kind": "List", "items": parse(text)}, indent=2) + "\n"
    raise KubernetesError(f"unknown output format {output!r}; use one of: {', '.join(OUTPUTS)}")
