"""Kubernetes support: job spec -> Helm chart values -> rendered manifests (the chart is the one source)."""
