"""Shared fixtures: a real S3 server (moto_server) on 127.0.0.1, stores, a Ray instance.

Everything binds to 127.0.0.1. Servers start once per session.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ATOLL_QUIET", "1")

S3_KEY, S3_SECRET = "atoll-test-key", "atoll-test-secret"


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 server over HTTP on 127.0.0.1 (moto_server). Yields its endpoint URL."""
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    if exe is None:
        pytest.fail("moto_server is not installed; run `make setup` (it is in the test extras)")
    from atoll.parallel.groups import free_port

    port = free_port()
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a loaded machine: do not fail the last test's teardown
            proc.kill()
            proc.wait()


@pytest.fixture
def s3_config(s3_server):
    from atoll.store import S3Config

    return S3Config(endpoint_url=s3_server, region="us-east-1", access_key_id=S3_KEY, secret_access_key=S3_SECRET)


@pytest.fixture
def s3_store(s3_config):
    """An S3 store on a fresh bucket of the test server."""
    from atoll.store import open_store

    store = open_store(f"s3://atoll-{uuid.uuid4().hex[:12]}/runs", s3_config)
    store.create_bucket()
    return store


@pytest.fixture
def file_store(tmp_path):
    from atoll.store import open_store

    return open_store(str(tmp_path / "store"))


@pytest.fixture(params=["file", "s3"])
def any_store(request, tmp_path):
    """Runs a test once on a file store and once on the S3 server."""
    if request.param == "file":
        return request.getfixturevalue("file_store")
    return request.getfixturevalue("s3_store")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance (127.0.0.1) for the whole test session."""
    from atoll.runtime import ensure_ray, shutdown_ray

    ensure_ray(num_cpus=2)
    yield
    shutdown_ray()
