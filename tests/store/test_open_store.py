"""open_store: plain paths, file:// URIs, s3:// URIs, and bad schemes."""
from __future__ import annotations

from pathlib import Path

import pytest

from atoll.store import S3Config, StoreError, default_root, open_store
from atoll.store.file import FileStore
from atoll.store.s3 import S3Store

CFG = S3Config(endpoint_url="http://127.0.0.1:9", region="us-east-1", access_key_id="a", secret_access_key="b")


def test_plain_absolute_path(tmp_path):
    s = open_store(str(tmp_path / "st"))
    assert isinstance(s, FileStore)
    assert s.root == (tmp_path / "st").resolve()
    assert s.uri == (tmp_path / "st").resolve().as_uri()
    s.put_bytes("a/b", b"1")
    assert (tmp_path / "st" / "a" / "b").read_bytes() == b"1"
    assert s.local_path("a/b") == (tmp_path / "st" / "a" / "b").resolve()


def test_plain_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = open_store("rel/runs")
    assert s.root == (tmp_path / "rel" / "runs").resolve()
    assert not (tmp_path / "rel").exists()  # opening a store writes nothing


def test_file_uri(tmp_path):
    s = open_store((tmp_path / "st").as_uri())
    assert isinstance(s, FileStore) and s.root == (tmp_path / "st").resolve()
    assert open_store("file://localhost" + str(tmp_path / "st")).root == s.root


def test_file_uri_round_trips_through_store_uri(tmp_path):
    odd = tmp_path / "a dir with spaces%and percent"
    s = open_store(str(odd))
    s.put_bytes("k", b"v")
    again = open_store(s.uri)
    assert again.root == s.root
    assert again.get_bytes("k") == b"v"


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.delenv("ATOLL_STORE", raising=False)
    assert default_root() == "./runs"
    monkeypatch.chdir(tmp_path)
    assert open_store().root == (tmp_path / "runs").resolve()
    monkeypatch.setenv("ATOLL_STORE", str(tmp_path / "env"))
    assert open_store().root == (tmp_path / "env").resolve()


@pytest.mark.parametrize("uri,bucket,prefix,canonical", [
    ("s3://bkt", "bkt", "", "s3://bkt"),
    ("s3://bkt/", "bkt", "", "s3://bkt"),
    ("s3://bkt/runs", "bkt", "runs", "s3://bkt/runs"),
    ("s3://bkt/a/b/", "bkt", "a/b", "s3://bkt/a/b"),
])
def test_s3_uri(uri, bucket, prefix, canonical):
    s = open_store(uri, CFG)
    assert isinstance(s, S3Store)
    assert (s.bucket, s.prefix, s.uri) == (bucket, prefix, canonical)
    assert s.url("x/y") == canonical + "/x/y"
    assert s.local_path("x") is None


@pytest.mark.parametrize("uri", ["s3://", "s3:///prefix"])
def test_s3_uri_without_bucket(uri):
    with pytest.raises(StoreError) as info:
        open_store(uri, CFG)
    assert "s3://BUCKET/PREFIX" in str(info.value)


@pytest.mark.parametrize("uri", ["gs://bucket/x", "http://host/x", "hdfs:///x"])
def test_unknown_scheme(uri):
    with pytest.raises(StoreError) as info:
        open_store(uri)
    assert "unknown scheme" in str(info.value) and "s3://bucket/prefix" in str(info.value)


def test_keys_cannot_escape_the_root(tmp_path):
    s = open_store(str(tmp_path / "st"))
    s.put_bytes("../../escape", b"x")
    assert not (tmp_path / "escape").exists()
    assert s.list() == ["escape"]
    assert Path(s.local_path("../x")).is_relative_to(s.root)
