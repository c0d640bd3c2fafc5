"""The thin layer over the ``kubernetes`` client: every API call of the kubernetes target is here.

One ``KubeClient`` per kube context (no module-level clients). It takes the two
API objects it uses, so tests pass fakes of ``CustomObjectsApi``/``CoreV1Api``;
``KubeClient.for_context`` builds real ones from the kubeconfig. API errors become
``KubeApiError``; a missing object is ``None``/``False``, not an exception.
"""
from __future__ import annotations

from atoll.k8s.errors import KubeApiError, KubernetesError

GROUP, VERSION, RAYJOBS = "ray.io", "v1", "rayjobs"


def _translate(e: Exception) -> KubeApiError:
    body = getattr(e, "body", None) or ""
    try:
        import json

        message = json.loads(body).get("message", body)
    except (ValueError, AttributeError):
        message = str(body) or str(e)
    return KubeApiError(getattr(e, "status", 0) or 0, getattr(e, "reason", "") or "", message)


def _api_exception() -> type[Exception]:
    from kubernetes.client.exceptions import ApiException

    return ApiException


class KubeClient:
    """RayJobs and ConfigMaps in one cluster (one kube context)."""

    def __init__(self, custom_api, core_api, context: str | None = None):
        self.custom, self.core, self.context = custom_api, core_api, context

    @classmethod
    def for_context(cls, context: str | None) -> KubeClient:
        """Clients for ``context`` of the kubeconfig (None: its current context)."""
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        try:
            api = config.new_client_from_config(context=context)
        except ConfigException as e:
            try:
                names = [c["name"] for c in config.list_kube_config_contexts()[0]]
            except (ConfigException, TypeError):
                names = []
            raise KubernetesError(f"cannot use kube context {context or '(current)'}: {e}; contexts in the "
                                  f"kubeconfig: {', '.join(names) or 'none'} (see `kubectl config get-contexts`)"
                                  ) from None
        except FileNotFoundError:
            raise KubernetesError("no kubeconfig found (~/.kube/config or $KUBECONFIG); point kubectl at the "
                                  "cluster first (`kubectl config get-contexts`)") from None
        return cls(client.CustomObjectsApi(api), client.CoreV1Api(api), context)

    # -- RayJobs ------------------------------------------------------------------
    def create_rayjob(self, body: dict) -> dict | None:
        """Creates the RayJob; ``None`` when one with that name already exists."""
        ns = body["metadata"].get("namespace", "default")
        try:
            return self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, RAYJOBS, body)
        except _api_exception() as e:
            if e.status == 409:
                return None
            raise self._explain(e, f"creating RayJob {ns}/{body['metadata']['name']}") from None

    def get_rayjob(self, namespace: str, name: str) -> dict | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, RAYJOBS, name)
        except _api_exception() as e:
            if e.status == 404:
                return None
            raise self._explain(e, f"reading RayJob {namespace}/{name}") from None

    def delete_rayjob(self, namespace: str, name: str) -> bool:
        """Deletes the RayJob (and, through owner references, its RayCluster); False if it was gone."""
        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, RAYJOBS, name,
                                                        propagation_policy="Background")
            return True
        except _api_exception() as e:
            if e.status == 404:
                return False
            raise self._explain(e, f"deleting RayJob {namespace}/{name}") from None

    def list_rayjobs(self, namespace: str, label_selector: str) -> list[dict]:
        try:
            out = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, RAYJOBS,
                                                            label_selector=label_selector)
        except _api_exception() as e:
            raise self._explain(e, f"listing RayJobs in {namespace}") from None
        return list(out.get("items", []))

    # -- ConfigMaps ---------------------------------------------------------------
    def apply_config_map(self, body: dict) -> None:
        """Creates the ConfigMap, or replaces it when it exists."""
        ns, name = body["metadata"].get("namespace", "default"), body["metadata"]["name"]
        try:
            self.core.create_namespaced_config_map(ns, body)
            return
        except _api_exception() as e:
            if e.status != 409:
                raise self._explain(e, f"creating ConfigMap {ns}/{name}") from None
        try:
            self.core.replace_namespaced_config_map(name, ns, body)
        except _api_exception() as e:
            raise self._explain(e, f"replacing ConfigMap {ns}/{name}") from None

    def _explain(self, e: Exception, doing: str) -> KubeApiError:
        err = _translate(e)
        hint = {403: "the kube user may not do this: check its RBAC in that namespace",
                404: "is the KubeRay operator installed (CRD rayjobs.ray.io) and does the namespace exist?",
                401: "the kube credentials were refused: refresh them (`kubectl get ns` must work)"}.get(err.status)
        where = f"context {self.context}" if self.context else "the current context"
        err.args = (f"{doing} in {where}: {err.args[0]}" + (f"; {hint}" if hint else ""),)
        return err
