"""S3 specifics: multipart uploads, credentials, missing buckets, unreachable endpoints."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import uuid

import pytest

from atoll.store import S3Config, StoreError, open_store

MiB = 1024 * 1024
CRED_FIX = "check the access key and secret"


def test_multipart_upload_round_trips_byte_exact(s3_config, tmp_path):
    cfg = dataclasses.replace(s3_config, multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    store = open_store(f"s3://mp-{uuid.uuid4().hex[:10]}/runs", cfg)
    store.create_bucket()
    data = os.urandom(12 * MiB + 123)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    store.put_file("shards/big.bin", src)
    head = store.client.head_object(Bucket=store.bucket, Key="runs/shards/big.bin")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3"), head["ETag"]  # 5 + 5 + 2 MiB parts: multipart
    out = store.get_file("shards/big.bin", tmp_path / "back.bin")
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(data).digest()
    # no unfinished multipart uploads left behind
    assert not store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads")


def test_small_file_is_a_single_put(s3_config, tmp_path):
    cfg = dataclasses.replace(s3_config, multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    store = open_store(f"s3://mp-{uuid.uuid4().hex[:10]}", cfg)
    store.create_bucket()
    src = tmp_path / "small.bin"
    src.write_bytes(b"x" * 1000)
    store.put_file("small.bin", src)
    etag = store.client.head_object(Bucket=store.bucket, Key="small.bin")["ETag"].strip('"')
    assert "-" not in etag and etag == hashlib.md5(b"x" * 1000).hexdigest()
    assert store.list() == ["small.bin"]


def test_missing_bucket_says_create_it(s3_config):
    store = open_store(f"s3://nobucket-{uuid.uuid4().hex[:10]}/p", s3_config)
    with pytest.raises(StoreError) as info:
        store.put_bytes("k", b"1")
    assert "does not exist" in str(info.value) and "create it" in str(info.value)


def test_unreachable_endpoint_names_the_fix(free_closed_port):
    cfg = S3Config(endpoint_url=f"http://127.0.0.1:{free_closed_port}", region="us-east-1",
                   access_key_id="a", secret_access_key="b")
    store = open_store("s3://bkt/p", cfg)
    with pytest.raises(StoreError) as info:
        store.get_bytes("k")
    assert "cannot reach the S3 endpoint" in str(info.value) and "endpointUrl" in str(info.value)


@pytest.fixture
def free_closed_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- a server that checks signatures (SeaweedFS) --------------------------------------
@pytest.fixture
def weed_store(weed_config):
    store = open_store(f"s3://w-{uuid.uuid4().hex[:10]}/runs", weed_config)
    store.create_bucket()
    return store


def test_right_credentials_work(weed_store, tmp_path):
    weed_store.put_bytes("a/b", b"hello")
    weed_store.put_json("a/m.json", {"x": 1})
    assert weed_store.get_bytes("a/b") == b"hello"
    assert weed_store.list() == ["a/b", "a/m.json"]
    assert weed_store.list("a/b") == ["a/b"]
    assert weed_store.exists("a/b") and not weed_store.exists("a/c")
    weed_store.commit("a", {"what": "t"})
    assert weed_store.manifest("a")["what"] == "t"
    src = tmp_path / "f"
    src.write_bytes(b"z" * 10000)
    weed_store.put_file("f", src)
    assert weed_store.get_file("f", tmp_path / "g").read_bytes() == src.read_bytes()


@pytest.mark.parametrize("which", ["wrong-secret", "unknown-key"])
def test_wrong_credentials_say_how_to_fix(weed_store, weed_config, tmp_path, which):
    weed_store.put_bytes("a/b", b"hello")
    if which == "wrong-secret":
        bad = dataclasses.replace(weed_config, secret_access_key="not-the-secret")
    else:
        bad = dataclasses.replace(weed_config, access_key_id="nobody", secret_access_key="nothing")
    store = open_store(weed_store.uri, bad)
    src = tmp_path / "f"
    src.write_bytes(b"data")
    calls = {
        "read": lambda: store.get_bytes("a/b"),
        "write": lambda: store.put_bytes("a/c", b"x"),
        "list": lambda: store.list(),
        "check": lambda: store.exists("a/b"),
        "upload": lambda: store.put_file("a/f", src),
        "download": lambda: store.get_file("a/b", tmp_path / "out"),
        "delete": lambda: store.delete("a/b"),
    }
    for what, call in calls.items():
        with pytest.raises(StoreError) as info:
            call()
        msg = str(info.value)
        assert CRED_FIX in msg and "AWS_ACCESS_KEY_ID" in msg, (what, msg)
        assert f"to {what} " in msg and weed_store.uri in msg, (what, msg)
        assert "does not exist" not in msg
    # nothing was changed by the refused calls
    assert weed_store.list("a") == ["a/b"]
    assert not (tmp_path / "out").exists()
