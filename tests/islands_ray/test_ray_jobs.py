"""The Jobs API layer against real clusters: submit, adopt, logs, and an unreachable island."""
from __future__ import annotations

import time
import uuid

import pytest

from atoll.islands.ray_jobs import SUCCEEDED, TERMINAL, JobsClient, Unreachable

pytestmark = pytest.mark.slow


def test_submit_adopt_logs(ray_islands, tmp_path):
    c = ray_islands["a"]
    (tmp_path / "hello.txt").write_text("hi from the working dir")
    client = JobsClient("a", c.address)
    sub = f"t-{uuid.uuid4().hex[:6]}"
    env = {"ATOLL_PROBE": "42", "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = "python -c \"import os;print(open('hello.txt').read(), os.environ['ATOLL_PROBE'], os.environ['RAY_ADDRESS'])\""
    job_id = client.submit(entrypoint=cmd, submission_id=sub, working_dir=str(tmp_path), env_vars=env)
    assert job_id == sub
    # the same submission id again is adopted, not submitted twice
    assert client.submit(entrypoint=cmd, submission_id=sub, working_dir=str(tmp_path), env_vars=env) == sub
    deadline = time.time() + 60
    while client.status(job_id) not in TERMINAL and time.time() < deadline:
        time.sleep(0.5)
    assert client.status(job_id) == SUCCEEDED, client.logs(job_id)
    logs = client.logs(job_id)
    assert "hi from the working dir 42" in logs
    assert c.gcs_address in logs  # the job's driver saw its own cluster's GCS, nobody else's


def test_unreachable_island_is_named():
    client = JobsClient("gone", "http://127.0.0.1:9")
    with pytest.raises(Unreachable, match="island 'gone'"):
        client.status("nope")
