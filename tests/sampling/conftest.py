"""Fixtures for the sampling tests; the builders live in ``sampling_helpers.py``."""
from __future__ import annotations

import pytest

from sampling_helpers import CLASS_NAMES, NUM_CLASSES, job_yaml, make_experts, make_router, perturbed, save_run  # noqa: F401


@pytest.fixture(scope="session")
def saved_runs(tmp_path_factory):
    """A file store with ``ens`` (K=2 + router) and ``mono`` (monolith) runs. Do not modify them."""
    root = str(tmp_path_factory.mktemp("sampling-store"))
    ens = save_run(root, "ens", 2)
    mono = save_run(root, "mono", 1, monolith=True)
    return {"root": root, "ens": ens, "mono": mono}
