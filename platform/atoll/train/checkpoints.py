"""Training checkpoints in the store, so an island can resume from anywhere.

Layout under an island's folder (e.g. ``experts/000``)::

    checkpoints/step-000200/<DeepSpeed files>   uploaded by the ranks that wrote them
    checkpoints/step-000200/manifest.json       committed by rank 0 once all are up

A checkpoint counts only once its manifest is committed; ``latest`` ignores the
rest, so a worker killed mid-upload leaves nothing that a resume would trust.
"""
from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from atoll.store import Store, join

PREFIX = "checkpoints"
_TAG = re.compile(r"^step-(\d{6,})$")


def tag(step: int) -> str:
    return f"step-{step:06d}"


def committed_steps(island: Store) -> list[int]:
    steps = set()
    for key in island.list(PREFIX):
        parts = key.split("/")
        if len(parts) == 3 and parts[2] == "manifest.json" and (m := _TAG.match(parts[1])):
            steps.add(int(m.group(1)))
    return sorted(steps)


def latest(island: Store) -> int | None:
    steps = committed_steps(island)
    return steps[-1] if steps else None


def upload_rank_files(island: Store, local_dir: Path, step: int, owned) -> list[str]:
    """Uploads the files of ``local_dir/<tag>`` that this rank owns (``owned(name)``)."""
    src = Path(local_dir) / tag(step)
    done = []
    for f in sorted(src.rglob("*")):
        if f.is_file() and owned(f.name):
            rel = f.relative_to(src).as_posix()
            island.put_file(join(PREFIX, tag(step), rel), f)
            done.append(rel)
    return done


def commit(island: Store, step: int, extra: dict, keep: int = 2) -> None:
    """Commits checkpoint ``step`` (rank 0, after every rank uploaded) and prunes old ones."""
    files = [k.split("/", 2)[2] for k in island.list(join(PREFIX, tag(step)))]
    island.commit(join(PREFIX, tag(step)), {"step": step, "files": sorted(files), **extra})
    for old in committed_steps(island)[:-keep]:
        island.uncommit(join(PREFIX, tag(old)))


def manifest(island: Store, step: int) -> dict:
    """The committed manifest of checkpoint ``step`` (world size, ZeRO stage, files)."""
    m = island.manifest(join(PREFIX, tag(step)))
    if m is None:
        raise FileNotFoundError(f"{island.url(join(PREFIX, tag(step)))} is not a committed checkpoint")
    return m


def download(island: Store, step: int, local_dir: Path, wanted=None) -> Path:
    """Fetches checkpoint ``step`` into ``local_dir/<tag>`` (only files for which ``wanted(name)`` holds,
    when given: a rank needs the common files and its own ZeRO partition); returns ``local_dir``."""
    dst = Path(local_dir) / tag(step)
    if dst.exists():
        shutil.rmtree(dst)
    for key in island.list(join(PREFIX, tag(step))):
        rel = key.split("/", 2)[2]
        if rel != "manifest.json" and (wanted is None or wanted(rel.rsplit("/", 1)[-1])):
            island.get_file(key, dst / rel)
    return Path(local_dir)


def scratch_dir(name: str) -> Path:
    """A local scratch folder for DeepSpeed's own files before upload."""
    return Path(tempfile.mkdtemp(prefix=f"atoll-{name}-"))
