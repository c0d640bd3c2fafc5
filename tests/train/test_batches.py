"""Batch order: a pure function of (seed, step), so resumed runs see the same data."""
import torch

from atoll.train.deepspeed_engine import ds_config, owned_by_rank
from atoll.train.tasks import batch_indices
from atoll.spec.models import TrainingSpec


def test_batches_cover_each_epoch_exactly_once():
    n, b = 50, 8
    seen = torch.cat([batch_indices(n, s, b, seed=3) for s in range(7)])[:56]
    first_epoch = seen[:50]
    assert sorted(first_epoch.tolist()) == list(range(50))


def test_batches_are_a_function_of_seed_and_step():
    assert torch.equal(batch_indices(100, 5, 16, 1), batch_indices(100, 5, 16, 1))
    assert not torch.equal(batch_indices(100, 5, 16, 1), batch_indices(100, 5, 16, 2))
    assert not torch.equal(batch_indices(100, 5, 16, 1), batch_indices(100, 6, 16, 1))


def test_ds_config_splits_the_global_batch():
    cfg = ds_config(TrainingSpec(batch_size=64, grad_accum=2, zero_stage=1), world_size=4, bf16=True)
    assert cfg["train_micro_batch_size_per_gpu"] * 4 * cfg["gradient_accumulation_steps"] == 64
    assert cfg["zero_optimization"]["stage"] == 1 and cfg["bf16"]["enabled"]


def test_checkpoint_files_are_uploaded_by_their_owner():
    name = "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"
    assert owned_by_rank(name, 1) and not owned_by_rank(name, 0)
    assert owned_by_rank("mp_rank_00_model_states.pt", 0)
    assert not owned_by_rank("mp_rank_00_model_states.pt", 1)
