"""Fencing by attempt id: once a newer attempt holds a unit, the old attempt's writes are refused."""
from __future__ import annotations

import pytest

from atoll import fence
from atoll.store import open_store


@pytest.fixture(params=["file", "s3"])
def unit(request, tmp_path):
    if request.param == "file":
        return open_store(str(tmp_path / "runs")).sub("job/experts/000")
    return request.getfixturevalue("s3_store").sub("job/experts/000")


def test_the_current_attempt_writes_and_tags_what_it_commits(unit):
    fence.claim(unit, 1, island="a", job_id="j-a1")
    w = fence.guard(unit, 1)
    w.put_json("progress.json", {"step": 5})
    w.sub("checkpoints/step-000010").put_bytes("x.pt", b"x")
    m = w.commit("checkpoints/step-000010", {"step": 10})
    assert m["attempt"] == 1 and unit.manifest("checkpoints/step-000010")["attempt"] == 1
    assert unit.get_json("progress.json") == {"step": 5}


def test_a_superseded_attempt_can_neither_write_nor_commit_nor_delete(unit):
    fence.claim(unit, 1, island="a", job_id="j-a1")
    old = fence.guard(unit, 1)
    old.put_json("progress.json", {"step": 5})
    old.commit("checkpoints/step-000010", {"step": 10})
    fence.claim(unit, 2, island="b", job_id="j-a2")          # the control plane moved the unit to island b
    new = fence.guard(unit, 2)
    new.commit("checkpoints/step-000020", {"step": 20})
    for write in (lambda: old.put_json("progress.json", {"step": 99}),
                  lambda: old.commit("", {"name": "expert-000"}),
                  lambda: old.sub("model").put_bytes("model.safetensors", b"stale"),
                  lambda: old.uncommit("checkpoints/step-000020")):
        with pytest.raises(fence.Superseded, match="superseded by attempt 2 .*island b, job_id j-a2"):
            write()
    assert unit.get_json("progress.json") == {"step": 5}
    assert unit.manifest("checkpoints/step-000020")["attempt"] == 2 and unit.manifest("") is None
    assert not unit.exists("model/model.safetensors")
    assert old.get_json("progress.json") == {"step": 5}       # reads still work


def test_guard_refuses_a_superseded_attempt_at_once_and_attempt_zero_is_unfenced(unit):
    fence.claim(unit, 3)
    with pytest.raises(fence.Superseded):
        fence.guard(unit, 2)
    assert fence.guard(unit, 0) is unit
    assert fence.holder(unit)["attempt"] == 3


def test_an_unclaimed_unit_accepts_any_attempt(tmp_path):
    unit = open_store(str(tmp_path)).sub("experts/001")
    fence.guard(unit, 4).put_bytes("a", b"1")
    assert unit.get_bytes("a") == b"1"
