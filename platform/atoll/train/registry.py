"""Task kinds by name: what an island trains, chosen from the job and the unit's role.

Each kind names the module that defines it (like an entry point); the module registers
its class with ``@register(kind)`` when imported, and ``make_task`` imports it on first
use. Task modules import this one and each other only downward (``tasks`` <- ``video_task``,
``distill_task``);
nothing here imports a task module by name at import time.
"""
from __future__ import annotations

import importlib

#: kind -> the module that defines (and registers) it
KINDS: dict[str, str] = {
    "image-expert": "atoll.train.tasks",
    "router": "atoll.train.tasks",
    "video-expert": "atoll.train.video_task",
    "distill-student": "atoll.train.distill_task",
}
_CLASSES: dict[str, type] = {}


def register(kind: str):
    """Class decorator: ``@register("image-expert") class ExpertTask(Task): ...``."""
    def deco(cls: type) -> type:
        _CLASSES[kind] = cls
        return cls
    return deco


def task_kind(job, role: str) -> str:
    if role == "router":
        return "router"
    if job.spec.experts.distill_from is not None:
        return "distill-student"
    return "video-expert" if job.spec.is_video else "image-expert"


def task_class(kind: str) -> type:
    if kind not in _CLASSES:
        if kind not in KINDS:
            raise ValueError(f"unknown task kind {kind!r}; known: {', '.join(sorted(KINDS))}")
        importlib.import_module(KINDS[kind])
    return _CLASSES[kind]


def make_task(job, role: str, expert: int | None):
    """The task of one unit: the router, or expert ``expert`` (image or video DiT)."""
    cls = task_class(task_kind(job, role))
    if role == "router":
        return cls(job)
    if expert is None:
        raise ValueError("an expert task needs the expert id")
    return cls(job, expert)
