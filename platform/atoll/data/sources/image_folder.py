"""A folder of images: class sub-folders (labels sorted by folder name), or
``NAME.txt`` caption files beside ``NAME.png``/``NAME.jpg`` (then the files directly in the
folder come first, then each sub-folder's by name).

Channels (``data.source.channels``): 1 (grey), 3 (RGB), or ``auto``: 1 when every file
is grey (modes ``1``, ``L``, ``LA``, ``I``, ``I;16``, ``F``), else 3 (colour and palette
files, and grey files of a mostly colour folder, become RGB).

For the data stage, ``prepare`` lists the folder with one Ray task per class folder
(or per top-level entry, for captions), which also reads each file's header for
``auto``; each task writes its sorted file list to the run's scratch, so the driver
only holds counts and a conversion task reads only the lists of its own range. Samples
come in the same order as a plain sorted listing (by class, then by path).
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from atoll.data.errors import DataError
from atoll.data.sources.base import Sample, Source, as_hwc, resize, safe_key

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def _images_under(folder: Path) -> list[Path]:
    if folder.is_file():
        return [folder] if folder.suffix.lower() in IMAGE_EXTS else []
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def read_image(path: Path, channels: int = 3) -> np.ndarray:
    """Decodes one image file to uint8 [H, W, channels]; an unreadable file raises DataError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return as_hwc(np.asarray(im.convert("L" if channels == 1 else "RGB")))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {path} ({e}); replace or delete the file and rerun") from None


def is_grey(path: Path) -> bool:
    """Whether an image file is grey, from its header only."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.mode in GREY_MODES
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {path} ({e}); replace or delete the file and rerun") from None


def group_files(root: Path, group: str) -> list[Path]:
    """The image files of one listing group, sorted: a sub-folder (recursively), or ``""``: the
    files directly in ``root``."""
    if group == "":
        return sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    return _images_under(root / group)


def _grey_or_unreadable(path: Path) -> bool:
    """For ``auto`` channels: an unreadable file does not decide (it fails, or is skipped, when read)."""
    try:
        return is_grey(path)
    except DataError:
        return True


def list_group(root: str, group: str, label: int, peek: bool, ref, key: str) -> dict:
    """Ray task: the sorted image files of a group -> ``key`` in the scratch store (JSON of paths
    relative to ``root``); returns their count and how many are grey (when ``peek``)."""
    base = Path(root)
    files = [p.relative_to(base).as_posix() for p in group_files(base, group)]
    grey = sum(_grey_or_unreadable(base / f) for f in files) if peek else 0
    ref.open().put_bytes(key, json.dumps({"label": label, "files": files}).encode())
    return {"count": len(files), "grey": grey}


class ImageFolder(Source):
    def __init__(self, path: str, labels: str = "folders", image_size: int | None = None,
                 channels: str | int = "auto"):
        self.root, self.mode, self.image_size, self.channels = Path(path), labels, image_size, channels
        self.parts: list[tuple[str, int]] | None = None  # (scratch key, count) once prepared
        self.scratch = None
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

    def groups(self) -> list[tuple[str, int]]:
        """(group, label) listed by one task each, in sample order: the class folders; for captions,
        the files directly in the folder (group ``""``), then each sub-folder by name."""
        if self.mode == "folders":
            return [(c, i) for i, c in enumerate(self.class_names)]
        dirs = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        return [("", -1)] + [(d, -1) for d in dirs]

    def files(self) -> list[tuple[Path, int]]:
        """(image path, label) in sample order, listed in this process (small folders, tests)."""
        out = [(p, lbl) for g, lbl in self.groups() for p in group_files(self.root, g)]
        if not out:
            raise self._empty()
        return out

    def _empty(self) -> DataError:
        return DataError(f"image folder {self.root} has no images ({', '.join(sorted(IMAGE_EXTS))}); "
                         "fix data.source.path")

    def prepare(self, scratch) -> "ImageFolder":
        """Lists the folder with Ray tasks (one per group), decides ``auto`` channels; returns self."""
        from atoll.data.distributed import map_tasks
        from atoll.data.storeref import StoreRef

        ref, groups = StoreRef.of(scratch), self.groups()
        keys = [f"files/part-{g:05d}.json" for g in range(len(groups))]
        peek = self.channels == "auto"
        res = map_tasks(list_group, [(str(self.root), g, lbl, peek, ref, key) for (g, lbl), key in zip(groups, keys)],
                        desc=f"data: list {self.root}", samples_of=lambda r: r["count"])
        self.parts = [(key, r["count"]) for key, r in zip(keys, res) if r["count"]]
        self.scratch = ref
        if not self.parts:
            raise self._empty()
        if peek:
            self.channels = 1 if sum(r["grey"] for r in res) == sum(r["count"] for r in res) else 3
        return self

    def resolved_channels(self) -> int:
        if self.channels != "auto":
            return int(self.channels)
        files = self.files()
        return 1 if all(_grey_or_unreadable(p) for p, _ in files) else 3

    def count(self) -> int:
        return sum(c for _, c in self.parts) if self.parts is not None else len(self.files())

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

    def _range(self, start: int, stop: int) -> Iterator[tuple[int, Path, int]]:
        """(sample index, path, label) of samples ``start..stop-1``."""
        if self.parts is None:
            files = self.files()
            for i in range(start, min(stop, len(files))):
                yield i, *files[i]
            return
        store, first = self.scratch.open(), 0
        for key, count in self.parts:
            if first < stop and first + count > start:
                part = json.loads(store.get_bytes(key))
                for j in range(max(start - first, 0), min(stop - first, count)):
                    yield first + j, self.root / part["files"][j], part["label"]
            first += count

    def read(self, start: int, stop: int) -> Iterator[Sample]:
        if self.channels == "auto":
            self.channels = self.resolved_channels()
        channels = int(self.channels)
        for i, path, label in self._range(start, stop):
            rel = path.relative_to(self.root).with_suffix("").as_posix()
            try:
                image = read_image(path, channels)
            except DataError as e:
                self.skip(str(path), e)
                continue
            yield {"key": f"{i:07d}-{safe_key(rel)}"[:120], "image": resize(image, self.image_size),
                   "label": label, "caption": self._caption(path, label)}
