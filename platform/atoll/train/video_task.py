"""Rectified-flow training of a video expert (a ``VideoDiT``) on moving-clips shards.

Same island loop, batching, EMA, checkpointing and rectified-flow loss as
``tasks.ExpertTask`` (its loss is shape-generic); only the data layout and the model
differ. Stored clips are frames tiled vertically (``[N, C, T*H, W]``, see
``data.sources.moving_clips``); ``load`` turns them into
``images [N, C, T, H, W]`` so ``Task.batch`` yields ``x0 [b, C, T, H, W]`` in [-1, 1].
Class conditioning (with the null class for CFG) or none; text is not supported yet.
"""
from __future__ import annotations

import torch

from atoll.store import Store
from atoll.train.tasks import ExpertTask


def is_video_model(size: str) -> bool:
    """True for the VideoDiT sizes (``VDIT_SIZES``)."""
    from atoll.models.names import VIDEO_DIT_SIZE_NAMES

    return size in VIDEO_DIT_SIZE_NAMES


class VideoExpertTask(ExpertTask):
    """Expert ``k`` as a VideoDiT. ``images`` uint8 ``[N, C, T, H, W]``."""

    def load(self, run: Store) -> None:
        from atoll.data.sources.moving_clips import clips_tensor

        if self.job.spec.experts.conditioning == "text":
            raise ValueError(f"{self.name}: video experts ({self.job.spec.experts.model}) support "
                             "conditioning: class or none, not text (yet)")
        super().load(run)
        self.images = torch.from_numpy(clips_tensor(self.images.numpy()))

    def model_config(self):
        from atoll.models.video_dit import VideoDiTConfig

        _, c, frames, h, _ = self.images.shape
        ex = self.job.spec.experts
        from atoll.models.video_dit import VDIT_SIZES

        return VideoDiTConfig(size=ex.model, input_size=h, frames=frames, in_channels=c,
                              temporal_patch=VDIT_SIZES[ex.model].get("temporal_patch", 1),
                              num_classes=self.num_classes if ex.conditioning == "class" else 0)
