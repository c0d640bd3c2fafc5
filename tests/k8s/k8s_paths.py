"""Paths the k8s tests share (imported by name: several test folders have a conftest)."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "atoll"
