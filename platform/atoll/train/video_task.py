"""Rectified-flow training of a video expert (a ``VideoDiT``) on moving-clips shards.

Same island loop, streaming batches, EMA, checkpointing and rectified-flow loss as
``tasks.ExpertTask`` (its loss is shape-generic); only the data layout and the model
differ. Stored clips are frames tiled vertically (``[C, T*H, W]``, see
``data.sources.moving_clips``); each batch becomes ``x0 [b, C, T, H, W]`` in [-1, 1].
Class conditioning (with the null class for CFG) or none; text is not supported yet.
"""
from __future__ import annotations

import numpy as np
import torch

from atoll.store import Store
from atoll.train.registry import register
from atoll.train.tasks import ExpertTask


@register("video-expert")
class VideoExpertTask(ExpertTask):
    """Expert ``k`` as a VideoDiT; batches ``x0 [b, C, T, H, W]``."""

    def load(self, run: Store) -> None:
        if self.job.spec.experts.conditioning == "text":
            raise ValueError(f"{self.name}: video experts ({self.job.spec.experts.model}) support "
                             "conditioning: class or none, not text (yet)")
        super().load(run)

    def x0(self, x: np.ndarray) -> torch.Tensor:
        from atoll.data.sources.moving_clips import clips_tensor

        return super().x0(clips_tensor(x))

    @property
    def clip_shape(self) -> tuple[int, int, int, int]:
        """(C, T, H, W) of a stored clip."""
        from atoll.data.sources.moving_clips import frames_of

        c, th, w = self.sample_shape
        return c, frames_of((th, w)), w, w

    def model_config(self):
        from atoll.models.video_dit import VDIT_SIZES, VideoDiTConfig

        c, frames, h, _ = self.clip_shape
        ex = self.job.spec.experts
        return VideoDiTConfig(size=ex.model, input_size=h, frames=frames, in_channels=c,
                              temporal_patch=VDIT_SIZES[ex.model].get("temporal_patch", 1),
                              num_classes=self.num_classes if ex.conditioning == "class" else 0)
