"""Fixtures for the serving tests; the builders live in ``serve_helpers.py``."""
from __future__ import annotations

import pytest

from serve_helpers import CLASS_NAMES, save_tiny_run, serve_job  # noqa: F401


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("serve-store"))
    job, run = save_tiny_run(root, "tiny", 2)
    return {"root": root, "job": job, "run": run, "uri": run.uri}
