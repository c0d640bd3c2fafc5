"""Training batches: a pure function of (seed, step, rank), the same streamed or in memory."""
import pytest
import torch

from atoll.spec import dump, parse
from atoll.spec.models import TrainingSpec
from atoll.train.deepspeed_engine import ds_config, owned_by_rank
from atoll.train.registry import make_task, task_kind
from atoll.train.tasks import ExpertTask, RouterTask


def with_loader(job, **loader):
    d = dump(job)
    d["spec"]["data"]["loader"] = loader
    return parse(d)


def test_expert_batches_same_streamed_or_in_memory_and_per_rank(tiny):
    job, run = tiny(name="b1", k=2, batch=32)
    tasks = {}
    for mode in ("stream", "memory"):
        t = make_task(with_loader(job, mode=mode, shuffleWindow=128, chunkSize=16), "expert", 1)
        t.load(run)
        tasks[mode] = t
    s, m = tasks["stream"], tasks["memory"]
    assert s.num_samples() == m.num_samples() == run.manifest("partition/expert-001")["count"]
    for step in (0, 1, 7, 30):
        for rank in (0, 1):
            a, b = s.batch(step, 8, rank, 2, 1, 2, "cpu"), m.batch(step, 8, rank, 2, 1, 2, "cpu")
            assert torch.equal(a.x0, b.x0) and torch.equal(a.y, b.y)
            assert a.x0.shape == (8, 1, 8, 8) and -1 <= a.x0.min() and a.x0.max() <= 1
    r0, r1 = s.batch(3, 8, 0, 2, 0, 1, "cpu"), s.batch(3, 8, 1, 2, 0, 1, "cpu")
    assert not torch.equal(r0.x0, r1.x0)                       # ranks read different samples
    assert not torch.equal(s.batch(3, 8, 0, 2, 0, 1, "cpu").x0, s.batch(4, 8, 0, 2, 0, 1, "cpu").x0)
    assert (s.batch(0, 16, 0, 1, 0, 1, "cpu").y % 2 == 1).all()  # expert 1 holds the odd labels here
    assert s.model_config().in_channels == 1 and s.model_config().input_size == 8


def test_router_mixes_all_partitions_by_size(tiny):
    job, run = tiny(name="b2", k=2)
    t = make_task(job, "router", None)
    assert isinstance(t, RouterTask)
    t.load(run)
    sizes = [run.manifest(f"partition/expert-{k:03d}")["count"] for k in range(2)]
    assert t.num_samples() == sum(sizes)
    ys = torch.cat([t.batch(s, 64, 0, 1, 0, 1, "cpu").y for s in range(20)])
    share = (ys == 0).float().mean().item()
    assert abs(share - sizes[0] / sum(sizes)) < 0.1
    b = t.batch(0, 64, 0, 1, 0, 1, "cpu")
    assert b.c is not None and torch.equal(b.c % 2, b.y)      # the class parity is the cluster in this split


def test_registry_picks_the_task_kind(tiny):
    job, _ = tiny(name="b3", k=2)
    assert task_kind(job, "router") == "router" and task_kind(job, "expert") == "image-expert"
    assert type(make_task(job, "expert", 0)) is ExpertTask
    with pytest.raises(ValueError, match="expert id"):
        make_task(job, "expert", None)


def test_ds_config_splits_the_global_batch():
    cfg = ds_config(TrainingSpec(batch_size=64, grad_accum=2, zero_stage=1), world_size=4, bf16=True)
    assert cfg["train_micro_batch_size_per_gpu"] * 4 * cfg["gradient_accumulation_steps"] == 64
    assert cfg["zero_optimization"]["stage"] == 1 and cfg["bf16"]["enabled"]


def test_checkpoint_files_are_uploaded_by_their_owner():
    name = "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"
    assert owned_by_rank(name, 1) and not owned_by_rank(name, 0)
    assert owned_by_rank("mp_rank_00_model_states.pt", 0)
    assert not owned_by_rank("mp_rank_00_model_states.pt", 1)


def test_corrupt_shard_skipped_and_counted_in_the_island_metrics(tiny, tmp_path):
    """data.onCorrupt: skip -> batches go on with readable samples; the island's manifest counts what was skipped."""
    from atoll.train.report import IslandLog

    job, run = tiny(name="b4", k=2)
    key = "partition/expert-000/shard-00000.tar"
    data = bytearray(run.get_bytes(key))
    data[4000] ^= 0xFF
    run.put_bytes(key, bytes(data))
    strict = make_task(job, "expert", 0)
    strict.load(run)
    with pytest.raises(Exception, match="shard-00000.tar"):
        for step in range(40):
            strict.batch(step, 32, 0, 1, 0, 1, "cpu")
    d = dump(job)
    d["spec"]["data"]["onCorrupt"] = "skip"
    t = make_task(parse(d), "expert", 0)
    t.load(run)
    for step in range(40):
        assert t.batch(step, 32, 0, 1, 0, 1, "cpu").x0.shape[0] == 32
    log = IslandLog(run.sub("experts/000"), t, world=1)
    log.step(1, 0.5, 10.0, 1e-3)
    m = log.finish(model_config=t.model_config())
    assert m["data"]["corrupt_shards"] == 1 and m["data"]["skipped_samples"] == 1
    assert m["data"]["corrupt_shard_names"] == [run.url(key)]
    assert run.get_json("experts/000/progress.json")["data"]["skipped_samples"] == 1


def test_task_modules_import_only_downward():
    """registry <- tasks <- video_task: no module imports one above it, not even inside a function."""
    import ast
    import importlib.util

    def imports(mod: str) -> set[str]:
        tree = ast.parse(open(importlib.util.find_spec(mod).origin).read())
        out = set()
        for n in ast.walk(tree):
            if isinstance(n, ast.ImportFrom) and n.module:
                out.add(n.module)
            elif isinstance(n, ast.Import):
                out |= {a.name for a in n.names}
        return out

    assert not imports("atoll.train.registry") & {"atoll.train.tasks", "atoll.train.video_task"}
    assert "atoll.train.video_task" not in imports("atoll.train.tasks")
    assert {"atoll.train.tasks", "atoll.train.registry"} <= imports("atoll.train.video_task")
