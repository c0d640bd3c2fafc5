"""The Store API behaves the same on a folder and on S3 (moto_server)."""
from __future__ import annotations

import pytest

from atoll.store import MANIFEST, NotFound, StoreError, join


def test_bytes_round_trip(any_store):
    data = bytes(range(256)) * 40
    any_store.put_bytes("a/b/c.bin", data)
    assert any_store.get_bytes("a/b/c.bin") == data
    any_store.put_bytes("a/b/c.bin", b"")  # overwrite, empty object
    assert any_store.get_bytes("a/b/c.bin") == b""
    assert any_store.open("a/b/c.bin").read() == b""


def test_json_round_trip(any_store):
    obj = {"k": 4, "nested": {"xs": [1, 2.5, None, "s"]}, "unicode": "é✓"}
    any_store.put_json("meta/x.json", obj)
    assert any_store.get_json("meta/x.json") == obj


def test_bad_json_names_the_uri(any_store):
    any_store.put_bytes("bad.json", b"{not json")
    with pytest.raises(StoreError) as info:
        any_store.get_json("bad.json")
    assert any_store.url("bad.json") in str(info.value)


def test_list_is_recursive_sorted_and_prefix_exact(any_store):
    keys = ["data/b/2", "data/a/1", "data/ab/x", "data/a/sub/deep", "data/a", "other/z"]
    keys.remove("data/a")  # a key cannot also be a folder on a file store
    for k in keys:
        any_store.put_bytes(k, k.encode())
    assert any_store.list() == sorted(keys)
    assert any_store.list("data/a") == ["data/a/1", "data/a/sub/deep"]
    assert any_store.list("data/a/") == ["data/a/1", "data/a/sub/deep"]
    assert "data/ab/x" not in any_store.list("data/a")
    assert any_store.list("data/ab") == ["data/ab/x"]
    assert any_store.list("data/a/1") == ["data/a/1"]  # an exact key lists itself
    assert any_store.list("nothing/here") == []
    assert any_store.list("dat") == []  # no partial folder-name matches


def test_exists_and_delete(any_store):
    assert not any_store.exists("x/y")
    any_store.put_bytes("x/y", b"1")
    assert any_store.exists("x/y")
    assert not any_store.exists("x")  # a folder is not an object
    any_store.delete("x/y")
    assert not any_store.exists("x/y")
    any_store.delete("x/y")  # deleting a missing key is not an error
    assert any_store.list() == []


def test_delete_prefix(any_store):
    for k in ["run/a/1", "run/a/2", "run/ab/3", "run/b/4"]:
        any_store.put_bytes(k, b"x")
    assert any_store.delete_prefix("run/a") == 2
    assert any_store.list() == ["run/ab/3", "run/b/4"]
    assert any_store.delete_prefix("run/zzz") == 0


def test_not_found_names_the_uri(any_store):
    for call in (lambda: any_store.get_bytes("no/such"), lambda: any_store.get_json("no/such"),
                 lambda: any_store.open("no/such").read()):
        with pytest.raises(NotFound) as info:
            call()
        assert any_store.url("no/such") in str(info.value)
        assert "does not exist" in str(info.value)
        assert isinstance(info.value, KeyError) and isinstance(info.value, StoreError)


def test_get_file_missing_is_not_found(any_store, tmp_path):
    with pytest.raises(NotFound):
        any_store.get_file("no/such", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # no half-written download left behind


def test_sub_stores(any_store):
    runs = any_store.sub("runs")
    exp = runs.sub("exp1/experts")
    exp.put_bytes("0/model.bin", b"m0")
    exp.put_json("1/config.json", {"k": 1})
    assert any_store.get_bytes("runs/exp1/experts/0/model.bin") == b"m0"
    assert exp.list() == ["0/model.bin", "1/config.json"]
    assert runs.list("exp1") == ["exp1/experts/0/model.bin", "exp1/experts/1/config.json"]
    assert exp.exists("1/config.json") and not exp.exists("2/config.json")
    assert exp.url("0/model.bin") == any_store.url("runs/exp1/experts/0/model.bin")
    assert exp.uri == any_store.url("runs/exp1/experts")
    with pytest.raises(NotFound) as info:
        exp.get_bytes("9/x")
    assert any_store.url("runs/exp1/experts/9/x") in str(info.value)
    exp.delete("0/model.bin")
    assert exp.list() == ["1/config.json"]
    assert runs.delete_prefix("exp1") == 1
    assert any_store.list() == []


def test_put_file_get_file(any_store, tmp_path):
    src = tmp_path / "src.bin"
    data = b"\x00\x01payload" * 5000
    src.write_bytes(data)
    any_store.put_file("files/one.bin", src)
    assert any_store.get_bytes("files/one.bin") == data
    out = any_store.get_file("files/one.bin", tmp_path / "down" / "deep" / "one.bin")
    assert out.read_bytes() == data
    assert sorted(p.name for p in out.parent.iterdir()) == ["one.bin"]  # no temp files left


def test_writer_commits_on_exit(any_store):
    with any_store.writer("w/obj") as f:
        f.write(b"part1-")
        assert not any_store.exists("w/obj")  # nothing visible until the block ends
        f.write(b"part2")
    assert any_store.get_bytes("w/obj") == b"part1-part2"


def test_commit_and_manifest(any_store):
    art = "runs/r/partition"
    assert any_store.manifest(art) is None
    any_store.put_bytes(join(art, "assign.npy"), b"123")
    assert any_store.manifest(art) is None  # files alone do not make an artifact
    m = any_store.commit(art, {"what": "partition", "files": {"assign.npy": 3}})
    assert "committed_at" in m
    got = any_store.manifest(art)
    assert got == m and got["what"] == "partition"
    assert any_store.exists(join(art, MANIFEST))
    # a sub-store sees the same artifact
    assert any_store.sub("runs/r").manifest("partition") == m
    any_store.uncommit(art)
    assert any_store.manifest(art) is None
    assert any_store.list(art) == []


def test_commit_does_not_change_callers_dict(any_store):
    m = {"what": "x"}
    any_store.commit("a", m)
    assert m == {"what": "x"}
