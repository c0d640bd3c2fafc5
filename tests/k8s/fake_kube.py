"""A FAKE Kubernetes cluster with the KubeRay operator: not a real API server.

Stands in for ``kubernetes.client.CustomObjectsApi`` (RayJobs) and ``CoreV1Api``
(ConfigMaps) of one cluster, for tests of the kubernetes target where no API
server can run. It reproduces the behaviour the target relies on, as recorded from
kube-apiserver and KubeRay (ray-project/kuberay, ``rayjob_types.go`` and the RayJob
controller):

- create: returns the object with ``uid``/``resourceVersion``/``creationTimestamp``;
  the same name again -> ``ApiException`` 409 AlreadyExists (also while the old one
  is still being deleted); body namespace must match the URL's -> else 400.
- get/delete of a missing object -> 404 NotFound.
- delete: sets ``deletionTimestamp``; the object (finalizer ``ray.io/rayjob-finalizer``)
  is gone after ``delete_lag`` further reads.
- status, advanced by one step per read of that RayJob:
  no status -> ``Initializing`` -> ``Running``/``PENDING`` -> ``Running``/``RUNNING`` ->
  ``Complete``/``SUCCEEDED``, or for a failing attempt ``Failed``/``FAILED`` with
  ``reason: AppFailed`` and KubeRay's message.
Which attempts fail is scripted per RayJob name: ``outcomes={"run-a": ["fail", "succeed"]}``
(one entry per creation of that name; default: succeed).
"""
from __future__ import annotations

import copy
import json
from collections.abc import Callable

from kubernetes.client.exceptions import ApiException

SUCCEED_STEPS = [{"jobDeploymentStatus": "Initializing", "jobStatus": ""},
                 {"jobDeploymentStatus": "Running", "jobStatus": "PENDING"},
                 {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"},
                 {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED", "succeeded": 1, "failed": 0}]
FAIL_STEPS = SUCCEED_STEPS[:3] + [{"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "reason": "AppFailed",
                                   "message": "Job entrypoint command failed with exit code 1", "succeeded": 0,
                                   "failed": 1}]


def _error(status: int, reason: str, message: str) -> ApiException:
    body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
                       "reason": reason, "code": status})
    return ApiException(status=status, reason=reason, body=body)


class FakeCluster:
    """One fake cluster (one kube context): state shared by its two fake APIs."""

    def __init__(self, name: str = "fake", outcomes: dict[str, list[str]] | None = None, delete_lag: int = 1,
                 validator: Callable[[dict], list[str]] | None = None):
        self.name, self.delete_lag, self.validator = name, delete_lag, validator
        self.outcomes = {k: list(v) for k, v in (outcomes or {}).items()}
        self.rayjobs: dict[tuple[str, str], dict] = {}
        self.config_maps: dict[tuple[str, str], dict] = {}
        self.calls: list[tuple[str, ...]] = []
        self.created: list[dict] = []          # every RayJob body ever created, in order
        self._steps: dict[tuple[str, str], list[dict]] = {}
        self._deleting: dict[tuple[str, str], int] = {}
        self._version = 0
        self.custom, self.core = FakeCustomObjectsApi(self), FakeCoreV1Api(self)

    def _stamp(self, obj: dict) -> dict:
        self._version += 1
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", f"uid-{self._version}")
        meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
        meta["resourceVersion"] = str(self._version)
        return obj

    def read(self, key: tuple[str, str]) -> dict:
        """A read of a RayJob: advances its deletion or its status by one step."""
        if key in self._deleting:
            self._deleting[key] -= 1
            if self._deleting[key] < 0:
                del self._deleting[key], self.rayjobs[key]
                raise _error(404, "NotFound", f'rayjobs.ray.io "{key[1]}" not found')
            return copy.deepcopy(self.rayjobs[key])
        steps = self._steps[key]
        if steps:
            self.rayjobs[key]["status"] = dict(steps.pop(0))
        return copy.deepcopy(self.rayjobs[key])


class FakeCustomObjectsApi:
    """The subset of ``CustomObjectsApi`` the kubernetes target uses, for ``ray.io/v1 rayjobs`` only."""

    def __init__(self, cluster: FakeCluster):
        self.c = cluster

    def _check(self, group, version, plural):
        if (group, version, plural) != ("ray.io", "v1", "rayjobs"):
            raise _error(404, "NotFound", f"the server could not find the requested resource ({group}/{version} {plural})")

    def create_namespaced_custom_object(self, group, version, namespace, plural, body, **kw):
        self._check(group, version, plural)
        meta = body.get("metadata", {})
        name, ns = meta.get("name"), meta.get("namespace", namespace)
        self.c.calls.append(("create", ns, name))
        if ns != namespace:
            raise _error(400, "BadRequest", "the namespace of the provided object does not match the namespace "
                                            "sent on the request")
        if body.get("kind") != "RayJob" or body.get("apiVersion") != "ray.io/v1":
            raise _error(400, "BadRequest", f"expected ray.io/v1 RayJob, got {body.get('apiVersion')} {body.get('kind')}")
        problems = self.c.validator(body) if self.c.validator else []
        if problems:
            raise _error(422, "Invalid", f'RayJob.ray.io "{name}" is invalid: ' + "; ".join(problems))
        key = (ns, name)
        if key in self.c.rayjobs:
            raise _error(409, "AlreadyExists", f'rayjobs.ray.io "{name}" already exists')
        obj = self.c._stamp(copy.deepcopy(body))
        obj["metadata"]["finalizers"] = ["ray.io/rayjob-finalizer"]
        outcome = (self.c.outcomes.get(name) or ["succeed"]).pop(0)
        if name in self.c.outcomes and not self.c.outcomes[name]:
            self.c.outcomes[name] = ["succeed"]
        self.c._steps[key] = list(FAIL_STEPS if outcome == "fail" else SUCCEED_STEPS)
        self.c.rayjobs[key] = obj
        self.c.created.append(copy.deepcopy(obj))
        return copy.deepcopy(obj)

    def get_namespaced_custom_object(self, group, version, namespace, plural, name, **kw):
        self._check(group, version, plural)
        self.c.calls.append(("get", namespace, name))
        key = (namespace, name)
        if key not in self.c.rayjobs:
            raise _error(404, "NotFound", f'rayjobs.ray.io "{name}" not found')
        return self.c.read(key)

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, **kw):
        self._check(group, version, plural)
        self.c.calls.append(("delete", namespace, name))
        key = (namespace, name)
        if key not in self.c.rayjobs:
            raise _error(404, "NotFound", f'rayjobs.ray.io "{name}" not found')
        self.c.rayjobs[key]["metadata"]["deletionTimestamp"] = "2026-01-01T00:01:00Z"
        self.c._deleting.setdefault(key, self.c.delete_lag)
        return {"kind": "Status", "apiVersion": "v1", "status": "Success"}

    def list_namespaced_custom_object(self, group, version, namespace, plural, label_selector="", **kw):
        self._check(group, version, plural)
        self.c.calls.append(("list", namespace, label_selector))
        want = dict(p.split("=", 1) for p in label_selector.split(",") if p)
        items = [copy.deepcopy(o) for (ns, _), o in self.c.rayjobs.items() if ns == namespace
                 and all(o["metadata"].get("labels", {}).get(k) == v for k, v in want.items())]
        return {"apiVersion": "ray.io/v1", "kind": "RayJobList", "items": items}


class FakeCoreV1Api:
    """ConfigMaps only."""

    def __init__(self, cluster: FakeCluster):
        self.c = cluster

    def create_namespaced_config_map(self, namespace, body, **kw):
        name = body["metadata"]["name"]
        self.c.calls.append(("create-configmap", namespace, name))
        if (namespace, name) in self.c.config_maps:
            raise _error(409, "AlreadyExists", f'configmaps "{name}" already exists')
        self.c.config_maps[(namespace, name)] = self.c._stamp(copy.deepcopy(body))
        return copy.deepcopy(body)

    def replace_namespaced_config_map(self, name, namespace, body, **kw):
        self.c.calls.append(("replace-configmap", namespace, name))
        if (namespace, name) not in self.c.config_maps:
            raise _error(404, "NotFound", f'configmaps "{name}" not found')
        self.c.config_maps[(namespace, name)] = self.c._stamp(copy.deepcopy(body))
        return copy.deepcopy(body)
