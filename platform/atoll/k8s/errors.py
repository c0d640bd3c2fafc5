"""Errors of the kubernetes target, each naming the problem and the fix."""
from __future__ import annotations


class KubernetesError(Exception):
    """A problem submitting to or watching a cluster (bad spec for k8s, helm, API errors)."""


class HelmError(KubernetesError):
    """helm is missing, or `helm template` rejected the values."""


class KubeApiError(KubernetesError):
    """The Kubernetes API answered with an error status."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(f"Kubernetes API error {status} ({reason}): {message}")
        self.status, self.reason, self.message = status, reason, message


class IslandsFailed(KubernetesError):
    """Islands that still failed after all their retries; the message names each one."""

    def __init__(self, failures: dict[str, str], max_retries: int):
        self.failures = dict(failures)
        lines = [f"  - {name}: {why}" for name, why in failures.items()]
        super().__init__(f"{len(failures)} island(s) failed after {max_retries} retr"
                         f"{'y' if max_retries == 1 else 'ies'} each:\n" + "\n".join(lines)
                         + "\nFix the cause (kubectl logs on the RayJob's submitter pod, or the Ray "
                           "dashboard) and submit again: finished islands are kept, failed ones retried.")
