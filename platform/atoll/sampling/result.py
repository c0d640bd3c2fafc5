"""What ``Ensemble.sample`` returns."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from atoll.sampling.trace import Trace


@dataclass
class SampleResult:
    """``images``: uint8 ``[N, C, H, W]`` (or float ``[-1, 1]`` with ``output="float"``);
    ``labels``: long ``[N]`` or None (unconditional); ``trace`` when asked for;
    ``expert_rows[k]``: rows expert ``k`` was evaluated on in total (CFG passes counted);
    ``router_rows``: rows the router saw."""

    images: torch.Tensor
    labels: torch.Tensor | None
    strategy: str
    steps: int
    sampler: str
    guidance: float
    seed: int
    wall_s: float
    gflops_per_image: float
    trace: Trace | None = None
    expert_rows: list[int] = field(default_factory=list)
    router_rows: int = 0

    @property
    def num_images(self) -> int:
        return int(self.images.shape[0])

    @property
    def seconds_per_image(self) -> float:
        return self.wall_s / max(1, self.num_images)

    def summary(self) -> dict:
        """JSON-ready numbers: strategy, sizes, wall time and GFLOPs per image, expert rows."""
        return {"strategy": self.strategy, "num_images": self.num_images, "steps": self.steps,
                "sampler": self.sampler, "guidance": self.guidance, "seed": self.seed,
                "wall_s": round(self.wall_s, 4), "seconds_per_image": round(self.seconds_per_image, 5),
                "gflops_per_image": round(self.gflops_per_image, 4), "expert_rows": list(self.expert_rows),
                "router_rows": self.router_rows}
