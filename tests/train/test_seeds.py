"""Every unit of a job has its own seed: experts start from different weights and draw other noise;
a fixed spec still gives fixed seeds."""
from __future__ import annotations

import torch

from atoll.train.loop import initial_model
from atoll.train.seeds import step_seed, unit_seed
from atoll.train.tasks import make_task


def test_unit_seeds_differ_per_unit_and_are_stable():
    seeds = {unit_seed(0, "expert", k) for k in range(64)} | {unit_seed(0, "router", None)}
    assert len(seeds) == 65 and all(0 <= s < 2**31 for s in seeds)
    assert unit_seed(0, "expert", 3) == unit_seed(0, "expert", 3)
    assert unit_seed(0, "expert", 3) != unit_seed(1, "expert", 3)
    assert step_seed(5, 10, 0, 0) != step_seed(5, 10, 1, 0) != step_seed(5, 11, 0, 0)


def test_two_experts_of_one_job_have_different_initial_weights(tiny):
    job, run = tiny(name="seeds", k=2)
    tasks = [make_task(job, "expert", k) for k in (0, 1)]
    for t in tasks:
        t.load(run)
    seed = job.spec.experts.training.seed
    a = initial_model(tasks[0], unit_seed(seed, "expert", 0)).state_dict()
    b = initial_model(tasks[1], unit_seed(seed, "expert", 1)).state_dict()
    again = initial_model(tasks[0], unit_seed(seed, "expert", 0)).state_dict()
    weights = [k for k, v in a.items() if v.is_floating_point() and v.numel() > 1 and v.std() > 0]
    assert weights, "the model has no randomly initialised weights?"
    assert all(torch.equal(a[k], again[k]) for k in a)  # reproducible
    assert not any(torch.equal(a[k], b[k]) for k in weights)  # every random tensor differs
