"""A run's versioned list of experts: ``experts/registry.json``.

A run as ``atoll run`` trains it is version 1, implicitly (no file): experts ``0..K-1`` active, the
router at ``router/model``. Changing the ensemble after training writes the file with the next
version: each expert keeps its id and folder for good and gets a ``state`` (``active`` or
``retired``); ``router`` names the router checkpoint of this version; ``history`` says what each
version did, when. Loaders (``sampling.runs.inspect_run``, so the library, ``atoll sample`` and
``atoll serve``) serve the active experts in id order with the registry's router.

``retire``: the expert's state becomes ``retired`` (its weights stay where they are) and the router
of the new version is the old one with the head rows of the active experts only
(``models.router.with_heads``): its softmax over them is the old softmax renormalised,
``p(k | x_t) / sum over active p(j | x_t)``, i.e. the router's answer with the retired expert's data
taken out of the mixture. No retraining. With one expert left the run serves that expert alone.
"""
from __future__ import annotations

import time

from atoll.store import Store

REGISTRY = "experts/registry.json"


class RegistryError(ValueError):
    """A change the registry refuses (unknown or already retired expert, the last one); says the fix."""


def now() -> str:
    """A registry timestamp (UTC, like the stores' ``committed_at``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def implicit(store: Store, num_experts: int) -> dict:
    """Version 1 of a run without a registry file: every trained expert active, ``router/model``."""
    experts = []
    for k in range(num_experts):
        m = store.manifest(f"experts/{k:03d}") or {}
        experts.append({"id": k, "prefix": f"experts/{k:03d}", "state": "active", "data": f"partition/expert-{k:03d}",
                        "samples": m.get("num_samples"), "fingerprint": m.get("fingerprint"),
                        "created": m.get("committed_at"), "version": 1})
    return {"version": 1, "router": "router/model", "experts": experts,
            "history": [{"version": 1, "action": "train", "experts": list(range(num_experts)), "at": None}]}


def load(store: Store, num_experts: int) -> dict:
    """The registry of the run at ``store`` (``num_experts``: the job's K, for the implicit version 1)."""
    return store.get_json(REGISTRY) if store.exists(REGISTRY) else implicit(store, num_experts)


def current_version(store: Store) -> int:
    """The version a loader would serve now (1 without a registry file); one small read, for replicas that poll."""
    return int(store.get_json(REGISTRY)["version"]) if store.exists(REGISTRY) else 1


def active(reg: dict) -> list[int]:
    """The ids of the experts served, ascending."""
    return sorted(e["id"] for e in reg["experts"] if e["state"] == "active")


def retire(store: Store, expert: int, *, num_experts: int, reason: str = "") -> dict:
    """Retires ``expert`` of the run at ``store`` (``num_experts``: the job's K, ``RunInfo.total_experts``) in a
    new version (see the module docstring); returns the new registry."""
    from atoll.models.checkpoint import from_pretrained, save_pretrained
    from atoll.models.router import with_heads

    reg = load(store, num_experts)
    ids = active(reg)
    known = [e["id"] for e in reg["experts"]]
    if expert not in known:
        raise RegistryError(f"--expert {expert}: the run at {store.uri} has experts {known}; pick one of the "
                            f"active ones {ids}")
    if expert not in ids:
        raise RegistryError(f"expert {expert} is already retired (version {_retired_in(reg, expert)}); active: {ids}")
    if len(ids) == 1:
        raise RegistryError(f"expert {expert} is the last active expert of {store.uri}; an ensemble needs one")
    keep = [k for k in ids if k != expert]
    version = reg["version"] + 1
    router_prefix = reg["router"]
    if len(keep) > 1:  # one expert left needs no router
        old = from_pretrained(store, reg["router"])
        rows = [ids.index(k) for k in keep]  # the old router's outputs are the old active experts, in id order
        router_prefix = f"router/versions/v{version}/model"
        save_pretrained(with_heads(old, rows), store, router_prefix)
    new = {**reg, "version": version, "router": router_prefix,
           "experts": [{**e, "state": "retired", "retired": now(), "reason": reason} if e["id"] == expert else e
                       for e in reg["experts"]],
           "history": reg["history"] + [{"version": version, "action": "retire", "expert": expert, "reason": reason,
                                         "router": "restricted (renormalised, not retrained)", "at": now()}]}
    store.put_json(REGISTRY, new)  # atomic: loaders see the old version or the new one
    return new


def _retired_in(reg: dict, expert: int) -> int | None:
    return next((h["version"] for h in reg["history"] if h.get("action") == "retire" and h.get("expert") == expert),
                None)


def forget_versions(store: Store) -> None:
    """Back to version 1: the registry file first (loaders then serve every expert with ``router/model``),
    then the restricted routers."""
    if store.exists(REGISTRY):
        store.delete(REGISTRY)
    store.delete_prefix("router/versions")
