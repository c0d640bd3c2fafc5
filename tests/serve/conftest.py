"""Fixtures for the serving tests; the builders live in ``serve_helpers.py``.

``served`` is ONE Serve app (ensemble mode, with an API key) shared by every module of this package
(a Serve app costs ~1 GiB and several seconds to start here); modules that kill its replica wait
for Serve to replace it before they return.
"""
from __future__ import annotations

import pytest

from serve_helpers import CLASS_NAMES, save_tiny_run, serve_job  # noqa: F401

API_KEY = "atoll-test-key-7f3a9c"  # a test key: the auth tests check it never reaches a log file
SERVE = """
serve:
  maxSamples: 8
  maxSteps: 50
  defaultSteps: 6
  ensemble: {numCpus: 1, maxBatchSize: 32}
"""


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("serve-store"))
    job, run = save_tiny_run(root, "tiny", 2)
    return {"root": root, "job": job, "run": run, "uri": run.uri}


@pytest.fixture(scope="package")
def served(tmp_path_factory, ray_local):
    from atoll.parallel.groups import free_port
    from atoll.sampling import Ensemble
    from atoll.serve import runner
    from atoll.serve.app import build_app
    from atoll.serve.ingress import IngressOptions

    root = str(tmp_path_factory.mktemp("served-store"))
    job, run = save_tiny_run(root, "served", 2, serve=SERVE)
    opts = IngressOptions(request_timeout_s=60, retry_after_s=1.0, health_poll_s=0.25)
    app = build_app(job, options=opts, environ={"ATOLL_API_KEY": API_KEY})
    url = runner.start(app, job.spec.serve, 2, port=free_port())
    try:
        yield {"url": url, "ens": Ensemble.from_pretrained(run.uri), "run": run, "key": API_KEY}
    finally:
        runner.shutdown()


@pytest.fixture(scope="package")
def client(served):
    import httpx

    with httpx.Client(base_url=served["url"], timeout=90, headers={"Authorization": f"Bearer {API_KEY}"}) as c:
        yield c
