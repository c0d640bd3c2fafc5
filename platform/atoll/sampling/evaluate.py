"""Class accuracy of samples, scored by a classifier trained on the real data.

Only for runs whose data the reference classifier knows (Fashion-MNIST: 10 classes,
1x28x28); other runs get None, and the samples stage works without it. The
classifier is trained once (~1-2 min on 2 cores) and cached (``atoll.eval.cache``).
"""
from __future__ import annotations

import torch

from atoll.progress import console
from atoll.store import Store

FASHION_MNIST_CLASSES = 10
FASHION_MNIST_SHAPE = (1, 28, 28)


def knows(run: Store, images: torch.Tensor) -> bool:
    """Whether the Fashion-MNIST reference classifier applies to this run's images."""
    data = run.manifest("data") or {}
    names = [n.lower() for n in data.get("class_names") or []]
    return (tuple(images.shape[1:]) == FASHION_MNIST_SHAPE and len(names) == FASHION_MNIST_CLASSES
            and "sneaker" in names and "ankle boot" in names)


def class_accuracy(run: Store, images: torch.Tensor, labels: torch.Tensor | None) -> float | None:
    """The reference classifier's accuracy on ``images`` (uint8 [N, C, H, W]) against ``labels``, or None."""
    if labels is None or not knows(run, images):
        return None
    try:
        from atoll.eval.api import reference_classifier
        from atoll.eval.metrics import class_accuracy as accuracy

        return float(accuracy(reference_classifier(), images, labels))
    except Exception as e:  # an evaluation problem must not lose the samples themselves
        console().print(f"[yellow]warning:[/yellow] sample classifier failed ({type(e).__name__}: {e}); "
                        "accuracy left out of samples/manifest.json")
        return None


def to_classifier_size(images: torch.Tensor, side: int = FASHION_MNIST_SHAPE[-1]) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` -> uint8 ``[N, C, side, side]`` (bilinear, antialiased) for the reference
    classifier; returned as is when already that size."""
    if tuple(images.shape[-2:]) == (side, side):
        return images
    from atoll.sampling.grid import to_uint8

    x = images.float() / 127.5 - 1
    return to_uint8(torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear", antialias=True,
                                                    align_corners=False))


def clip_stills(clips: torch.Tensor) -> torch.Tensor:
    """Moving-clips videos uint8 ``[N, 1, T, S, S]`` -> one 28x28 still per clip for the image classifier:
    the object-centred frame mean (``data.features.pool_clips``), its central ``S/2`` object window
    (moving-clips objects are ``S // 2`` px) upsampled to 28x28."""
    import numpy as np

    from atoll.data.features import pool_clips

    n, c, t, h, w = clips.shape
    pooled = pool_clips(clips.cpu().numpy().reshape(n, c, t * h, w))  # frames tiled vertically, as stored
    lo, hi = h // 4, h - h // 4
    return to_classifier_size(torch.from_numpy(np.ascontiguousarray(pooled[:, :, lo:hi, lo:hi])))


def clip_class_accuracy(run: Store, clips: torch.Tensor, labels: torch.Tensor | None) -> float | None:
    """The reference classifier's accuracy on the stills of Fashion-MNIST moving clips (``clip_stills``), or None."""
    if labels is None or clips.dim() != 5 or clips.shape[1] != 1:
        return None
    return class_accuracy(run, clip_stills(clips), labels)
