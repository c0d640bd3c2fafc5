"""Fixtures of the Kubernetes tests: the real helm binary (never skipped), the chart, rendering."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from k8s_paths import CHART, REPO  # noqa: F401


@pytest.fixture(scope="session")
def helm_bin() -> str:
    """.venv/bin/helm (or helm beside this Python, or on PATH); fails, never skips, when missing."""
    for cand in (REPO / ".venv" / "bin" / "helm", Path(sys.executable).parent / "helm"):
        if os.access(cand, os.X_OK):
            return str(cand)
    found = shutil.which("helm")
    if found is None:
        pytest.fail("helm is not installed: run `make test` (it runs scripts/install_helm.sh) or "
                    "`bash scripts/install_helm.sh .venv/bin`", pytrace=False)
    return found


@pytest.fixture(scope="session", autouse=True)
def _atoll_helm(helm_bin):
    """Makes atoll.k8s use the same helm as the tests."""
    old = os.environ.get("ATOLL_HELM")
    os.environ["ATOLL_HELM"] = helm_bin
    yield
    if old is None:
        os.environ.pop("ATOLL_HELM", None)
    else:
        os.environ["ATOLL_HELM"] = old


@pytest.fixture(scope="session")
def helm(helm_bin):
    """helm(*args, values=None) -> CompletedProcess (values: a dict written to a values file)."""
    def run(*args: str, values: dict | None = None, tmp: Path | None = None) -> subprocess.CompletedProcess:
        extra = []
        if values is not None:
            path = (tmp or Path(os.environ.get("TMPDIR", "/tmp"))) / f"values-{os.getpid()}-{id(values)}.yaml"
            path.write_text(yaml.safe_dump(values, sort_keys=False))
            extra = ["-f", str(path)]
        return subprocess.run([helm_bin, *args, *extra], capture_output=True, text=True, timeout=60)
    return run
