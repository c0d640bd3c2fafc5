"""Data sources: each yields samples ``{"key", "image" uint8 [H,W,C], "label", "caption"}``."""
from __future__ import annotations

from atoll.data.sources.base import Sample, Source, caption_from_class, safe_key


def open_source(data, s3=None) -> Source:
    """The Source for a ``DataSpec`` (``data.source``, resized to ``data.image_size``; unreadable
    files or shards skipped when ``data.onCorrupt`` is ``skip``).

    ``s3`` is an ``atoll.store.S3Config`` for s3:// WebDataset URLs (default: environment).
    """
    source = _open(data, s3)
    source.on_corrupt = getattr(data, "on_corrupt", "error")
    return source


def _open(data, s3) -> Source:
    src, size = data.source, data.image_size
    if src.type == "fashion-mnist":
        from atoll.data.sources.fashion_mnist import FashionMnist

        return FashionMnist(src.path, src.split, size)
    if src.type == "digits":
        from atoll.data.sources.digits import Digits

        return Digits(size)
    if src.type == "image-folder":
        from atoll.data.sources.image_folder import ImageFolder

        return ImageFolder(src.path, src.labels, size, src.channels)
    if src.type == "webdataset":
        from atoll.data.sources.webdataset_source import WebDatasetShards

        return WebDatasetShards(list(src.urls), size, s3)
    if src.type == "moving-clips":
        from atoll.data.errors import DataError
        from atoll.data.sources.moving_clips import MovingClips

        if size is not None and size != src.size:
            raise DataError(f"data.imageSize {size} does not apply to moving-clips (frames are tiled "
                             f"vertically); set data.source.size instead (now {src.size})")
        return MovingClips(src.images, src.path, src.num_clips, src.frames, src.size, src.objects, src.seed)
    raise NotImplementedError(f"data.source.type {src.type!r} has no reader in atoll.data.sources")


__all__ = ["Sample", "Source", "caption_from_class", "open_source", "safe_key"]
