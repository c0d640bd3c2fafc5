"""Interrupted writes leave nothing visible; readers never see half an object."""
from __future__ import annotations

import os
import threading
import time

import pytest

from atoll.store import NotFound


class Boom(RuntimeError):
    pass


def _all_files(store) -> list[str]:
    """Every file on disk under the store root, temporary ones included."""
    return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file())


@pytest.mark.parametrize("old", [None, b"old value"], ids=["new-key", "overwrite"])
def test_writer_that_raises_leaves_nothing(any_store, old):
    if old is not None:
        any_store.put_bytes("d/obj", old)
    with pytest.raises(Boom):
        with any_store.writer("d/obj") as f:
            f.write(b"half of the new ")
            raise Boom()
    if old is None:
        assert not any_store.exists("d/obj")
        assert any_store.list() == []
        with pytest.raises(NotFound):
            any_store.get_bytes("d/obj")
    else:
        assert any_store.get_bytes("d/obj") == old
        assert any_store.list() == ["d/obj"]


@pytest.mark.parametrize("method", ["put_bytes", "put_file"])
@pytest.mark.parametrize("old", [None, b"old value"], ids=["new-key", "overwrite"])
def test_file_write_failing_at_rename_leaves_no_temp_file(file_store, monkeypatch, tmp_path, method, old):
    if old is not None:
        file_store.put_bytes("d/obj", old)
    src = tmp_path / "src.bin"
    src.write_bytes(b"new value" * 1000)

    def replace(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError):
        if method == "put_bytes":
            file_store.put_bytes("d/obj", src.read_bytes())
        else:
            file_store.put_file("d/obj", src)
    monkeypatch.undo()
    assert _all_files(file_store) == ([] if old is None else ["d/obj"])  # no .tmp left on disk either
    assert file_store.list() == ([] if old is None else ["d/obj"])
    if old is not None:
        assert file_store.get_bytes("d/obj") == old


def test_file_write_failing_mid_write_leaves_no_temp_file(file_store, monkeypatch):
    file_store.put_bytes("d/obj", b"old")

    real_fdopen = os.fdopen

    def fdopen(fd, *a, **k):
        f = real_fdopen(fd, *a, **k)
        real_write = f.write

        def write(data):
            real_write(data[: len(data) // 2])
            raise OSError(28, "No space left on device")

        f.write = write
        return f

    monkeypatch.setattr(os, "fdopen", fdopen)
    with pytest.raises(OSError):
        file_store.put_bytes("d/obj", b"n" * 100_000)
    monkeypatch.undo()
    assert _all_files(file_store) == ["d/obj"]
    assert file_store.get_bytes("d/obj") == b"old"


def test_in_flight_temp_files_are_not_listed(file_store):
    file_store.put_bytes("d/a", b"1")
    # what a concurrent writer's temporary file looks like mid-write
    (file_store.root / "d" / ".b.x1y2.tmp").write_bytes(b"partial")
    assert file_store.list() == ["d/a"]
    assert file_store.list("d") == ["d/a"]


def test_stage_that_raises_before_commit_leaves_no_manifest(any_store):
    art = any_store.sub("runs/r")

    def stage():
        art.put_bytes("experts/0/shard-0.tar", b"a" * 100)
        art.put_bytes("experts/0/shard-1.tar", b"b" * 100)
        raise Boom("island died")
        art.commit("experts/0", {"files": 2})  # never reached

    with pytest.raises(Boom):
        stage()
    assert art.manifest("experts/0") is None
    # a rerun of the stage can clear the leftovers and commit
    art.uncommit("experts/0")
    assert art.list() == []
    art.put_bytes("experts/0/shard-0.tar", b"a")
    art.commit("experts/0", {"files": 1})
    assert art.manifest("experts/0")["files"] == 1


def test_readers_never_see_partial_objects(any_store):
    size = 2 * 1024 * 1024 if any_store.uri.startswith("file:") else 512 * 1024
    versions = [bytes([c]) * size for c in b"ABCD"]
    any_store.put_bytes("hot/obj", versions[0])
    stop = threading.Event()
    errors: list[BaseException] = []
    writes = 0

    def writer():
        nonlocal writes
        try:
            while not stop.is_set():
                any_store.put_bytes("hot/obj", versions[writes % len(versions)])
                writes += 1
        except BaseException as e:  # surfaced below
            errors.append(e)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    reads, seen = 0, set()
    deadline = time.monotonic() + 1.5
    try:
        while time.monotonic() < deadline:
            got = any_store.get_bytes("hot/obj")
            assert got in versions, f"partial read: {len(got)} bytes, starts {got[:1]!r} ends {got[-1:]!r}"
            seen.add(got[:1])
            reads += 1
            assert any_store.list("hot") == ["hot/obj"]
    finally:
        stop.set()
        t.join(timeout=10)
    assert not errors, errors
    assert writes >= 3 and reads >= 3, (writes, reads)
    assert len(seen) >= 2, "the reader never saw a new version: the test proved nothing"
