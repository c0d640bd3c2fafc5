"""The thin layer over Ray Train: every ``ray.train`` call of Atoll lives here."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from atoll.spec.models import ScalingSpec


def context():
    """The calling Ray Train worker's ``WorkerContext`` (rank, world, local rank; reports to Ray Train)."""
    import ray.train

    from atoll.train.context import WorkerContext

    ctx = ray.train.get_context()
    return WorkerContext(rank=ctx.get_world_rank(), world=ctx.get_world_size(), local_rank=ctx.get_local_rank(),
                         report=report, kind="ray")


def report(metrics: dict) -> None:
    """Reports metrics to Ray Train; a barrier: every worker must call it equally often."""
    import ray.train

    ray.train.report(metrics)


def storage_path() -> str:
    """Where Ray Train keeps its own run state (Atoll's checkpoints live in the store)."""
    p = Path(os.environ.get("ATOLL_RAY_RESULTS", Path.home() / ".cache" / "atoll" / "ray_results"))
    p.mkdir(parents=True, exist_ok=True)
    return str(p)


def fit(loop: Callable[[dict], None], config: dict, scaling: ScalingSpec, name: str, max_failures: int) -> None:
    """Runs ``loop`` on ``scaling.num_workers`` workers (one process group) until done.

    A worker failure restarts the whole worker group (up to ``max_failures``
    times); ``loop`` resumes from its last checkpoint in the store.
    """
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    resources = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = scaling.gpus_per_worker or 1
    trainer = TorchTrainer(
        loop,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=name, storage_path=storage_path(),
                             failure_config=FailureConfig(max_failures=max_failures)),
    )
    trainer.fit()
