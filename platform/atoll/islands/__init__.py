"""Islands: where experts train (local Ray, remote Ray clusters, Kubernetes)."""
