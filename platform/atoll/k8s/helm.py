"""Finding and running the helm binary on the chart ``helm/atoll``."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from atoll.k8s.errors import HelmError

#: the chart in the source tree (editable installs; set ATOLL_CHART elsewhere)
CHART_DIR = Path(__file__).resolve().parents[3] / "helm" / "atoll"
INSTALL_HINT = ("run `make test` or `bash scripts/install_helm.sh .venv/bin` (installs helm and kubectl into "
                "the venv), or install helm >= 3.8 on PATH, or set ATOLL_HELM to its path")


def find_helm() -> str:
    """$ATOLL_HELM, else ``helm`` beside the running Python (the venv), else on PATH."""
    env = os.environ.get("ATOLL_HELM")
    if env:
        if not os.access(env, os.X_OK):
            raise HelmError(f"ATOLL_HELM={env} is not an executable file; {INSTALL_HINT}")
        return env
    beside = Path(sys.executable).parent / "helm"
    if os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("helm")
    if found is None:
        raise HelmError(f"helm not found; {INSTALL_HINT}")
    return found


def find_chart() -> Path:
    """$ATOLL_CHART, else the repository's helm/atoll."""
    chart = Path(os.environ.get("ATOLL_CHART") or CHART_DIR)
    if not (chart / "Chart.yaml").is_file():
        raise HelmError(f"no Helm chart at {chart} (no Chart.yaml); set ATOLL_CHART to the helm/atoll folder "
                        f"of an Atoll checkout")
    return chart


def run_helm(args: list[str], *, helm: str | None = None, timeout: float = 120) -> str:
    """Runs ``helm ARGS``; returns stdout; raises ``HelmError`` with helm's own message."""
    cmd = [helm or find_helm(), *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise HelmError(f"cannot run {cmd[0]}; {INSTALL_HINT}") from None
    except subprocess.TimeoutExpired:
        raise HelmError(f"`helm {args[0]}` took more than {timeout:.0f} s") from None
    if done.returncode:
        msg = "\n".join(line for line in done.stderr.splitlines() if not line.startswith("level=WARN"))
        raise HelmError(f"`helm {' '.join(args[:1])}` failed: {msg.strip() or done.stdout.strip()}")
    return done.stdout


def template(values: dict, *, release: str, namespace: str = "default", chart: Path | None = None,
             helm: str | None = None) -> str:
    """``helm template RELEASE CHART -f VALUES``: the rendered manifests, as helm prints them."""
    chart = chart or find_chart()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="atoll-values-") as f:
        yaml.safe_dump(values, f, sort_keys=False)
        f.flush()
        return run_helm(["template", release, str(chart), "--namespace", namespace, "-f", f.name], helm=helm)
