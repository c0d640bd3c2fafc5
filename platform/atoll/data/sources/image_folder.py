"""A folder of images: class sub-folders (labels sorted by folder name), or
``NAME.txt`` caption files beside ``NAME.png``/``NAME.jpg``. Images are RGB."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from atoll.data.errors import DataError
from atoll.data.sources.base import Sample, Source, as_hwc, resize, safe_key

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def read_image(path: Path) -> np.ndarray:
    """Decodes one image file to uint8 RGB [H, W, 3]; an unreadable file raises DataError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return as_hwc(np.asarray(im.convert("RGB")))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {path} ({e}); replace or delete the file and rerun") from None


class ImageFolder(Source):
    def __init__(self, path: str, labels: str = "folders", image_size: int | None = None):
        self.root, self.mode, self.image_size = Path(path), labels, image_size
        if not self.root.is_dir():
            raise DataError(f"image folder {self.root} does not exist or is not a folder; "
                            "fix data.source.path")
        if self.mode == "folders":
            classes = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
            if not classes:
                raise DataError(f"image folder {self.root} has no class sub-folders; put images in "
                                f"{self.root}/<class>/ or set data.source.labels: captions")
            self.class_names = classes
        else:
            self.class_names = None

    def files(self) -> list[tuple[Path, int]]:
        """(image path, label) in a fixed order: by class, then by path."""
        if self.mode == "folders":
            out = [(p, i) for i, c in enumerate(self.class_names) for p in _images_under(self.root / c)]
        else:
            out = [(p, -1) for p in _images_under(self.root)]
        if not out:
            raise DataError(f"image folder {self.root} has no images ({', '.join(sorted(IMAGE_EXTS))}); "
                            "fix data.source.path")
        return out

    def count(self) -> int:
        return len(self.files())

    def _caption(self, path: Path, label: int) -> str | None:
        if self.mode == "folders":
            return self.caption_for(label)
        txt = path.with_suffix(".txt")
        if not txt.is_file():
            return None
        try:
            return txt.read_text(encoding="utf-8").strip() or None
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read caption {txt} ({e}); save it as UTF-8 text") from None

    def read(self, start: int, stop: int) -> Iterator[Sample]:
        files = self.files()
        for i in range(start, min(stop, len(files))):
            path, label = files[i]
            rel = path.relative_to(self.root).with_suffix("").as_posix()
            yield {"key": f"{i:07d}-{safe_key(rel)}"[:120],
                   "image": resize(read_image(path), self.image_size),
                   "label": label, "caption": self._caption(path, label)}
