"""Where a restarted island continues from: its latest committed checkpoint, at any world size.

* Same data-parallel world size: each rank downloads the common files and its own ZeRO
  partition and DeepSpeed loads them as saved (bit-exact continuation).
* Another world size (a node lost, or the spec's ``scaling.numWorkers`` changed): ZeRO 1-3
  partitions belong to the old ranks, so every rank downloads the whole checkpoint and converts
  it to a DeepSpeed *universal* checkpoint (``ds_to_universal``: each parameter's fp32 weights and
  Adam moments as whole tensors), which the engine then loads resharded for the new world size
  (``"checkpoint": {"load_universal": true}``). The EMA is saved as full tensors, so it reshards by
  itself. ZeRO-0 checkpoints hold whole tensors already and load at any size.
  The global batch of each step stays the same; the per-rank noise streams are keyed by rank,
  so the continuation is a valid run but not the bit-identical one.
* A checkpoint written with another ZeRO stage is refused with the fix.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from atoll.store import Store
from atoll.train import checkpoints as ckpt
from atoll.train import deepspeed_engine as dse


class ResumeError(RuntimeError):
    """A checkpoint that this island cannot continue from (the message names both sides and the fix)."""


@dataclass(frozen=True)
class Resume:
    step: int
    directory: Path
    tag: str            # the folder DeepSpeed loads: the checkpoint's, or its universal conversion
    saved_world: int
    world: int
    universal: bool


def prepare_resume(island: Store, scratch: Path, rank: int, world: int, zero_stage: int) -> Resume | None:
    """Downloads (and if needed converts) the latest committed checkpoint; None when there is none."""
    step = ckpt.latest(island)
    if step is None:
        return None
    m = ckpt.manifest(island, step)
    saved_world, saved_stage = int(m.get("world_size", world)), int(m.get("zero_stage", zero_stage))
    where = island.url(f"{ckpt.PREFIX}/{ckpt.tag(step)}")
    if saved_stage != zero_stage:
        raise ResumeError(f"checkpoint {where} was written with ZeRO stage {saved_stage}, this island asks for "
                          f"stage {zero_stage}; set training.zeroStage: {saved_stage} to resume it, or retrain "
                          "the unit (`atoll run JOB.yaml --from experts`)")
    tag = ckpt.tag(step)
    if saved_world == world or zero_stage == 0:
        ckpt.download(island, step, scratch, wanted=lambda name: dse.needed_by_rank(name, rank))
        return Resume(step, scratch, tag, saved_world, world, universal=False)
    ckpt.download(island, step, scratch)
    out = f"{tag}-universal"
    try:
        dse.to_universal(scratch, tag, out)
    except Exception as e:  # a layout DeepSpeed cannot convert: say so instead of loading the wrong one
        raise ResumeError(f"checkpoint {where} was saved by {saved_world} workers and this island has {world}; "
                          f"converting it to a universal checkpoint failed ({type(e).__name__}: {e}). Resume with "
                          f"scaling.numWorkers: {saved_world}, or retrain the unit") from e
    return Resume(step, scratch, out, saved_world, world, universal=True)
