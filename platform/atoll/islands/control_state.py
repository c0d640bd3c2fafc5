"""The ``ray`` target's control state, kept in the store as ``control/state.json``.

One JSON object per run, replaced whole on every change (a store put is
atomic, so a reader sees the old state or the new one). Anyone who can read the
store (``atoll status``, ``atoll logs``, a second ``atoll submit``) sees which
island runs which unit, under which Ray job id, at which attempt, and why the
last attempt failed.

    {"version": 1, "run_id": "3f9a1c", "target": "ray", "status": "running",
     "updated_at": "...", "error": null,
     "units": {"expert-000": {"island": "a", "address": "http://127.0.0.1:8265",
                              "job_id": "atoll-tiny-3f9a1c-expert-000-a1", "attempt": 1,
                              "status": "RUNNING", "submitted_at": "...", "updated_at": "...",
                              "finished_at": null, "last_error": null,
                              "history": [{"attempt": 1, "island": "a", "job_id": "...",
                                           "status": "FAILED", "error": "..."}]}}}
"""
from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field

from atoll.store import Store

KEY = "control/state.json"
VERSION = 1
#: unit statuses: the Ray job statuses plus QUEUED (not submitted yet) and DONE (manifest committed)
QUEUED, DONE = "QUEUED", "DONE"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class UnitState:
    island: str | None = None
    address: str | None = None
    job_id: str | None = None
    attempt: int = 0
    status: str = QUEUED
    submitted_at: str | None = None
    updated_at: str | None = None
    finished_at: str | None = None
    last_error: str | None = None
    history: list[dict] = field(default_factory=list)


@dataclass
class ControlState:
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    target: str = "ray"
    status: str = "running"
    updated_at: str | None = None
    error: str | None = None
    units: dict[str, UnitState] = field(default_factory=dict)

    def unit(self, name: str) -> UnitState:
        return self.units.setdefault(name, UnitState())

    def to_json(self) -> dict:
        return {"version": VERSION, "run_id": self.run_id, "target": self.target, "status": self.status,
                "updated_at": self.updated_at, "error": self.error,
                "units": {k: asdict(v) for k, v in sorted(self.units.items())}}

    @classmethod
    def from_json(cls, d: dict) -> "ControlState":
        known = set(UnitState.__dataclass_fields__)
        units = {k: UnitState(**{f: v for f, v in u.items() if f in known}) for k, u in d.get("units", {}).items()}
        return cls(run_id=d.get("run_id") or uuid.uuid4().hex[:6], target=d.get("target", "ray"),
                   status=d.get("status", "running"), updated_at=d.get("updated_at"), error=d.get("error"),
                   units=units)


def load(run: Store) -> ControlState | None:
    """The run's control state, or None when no ``ray`` submit ever ran for it."""
    if not run.exists(KEY):
        return None
    return ControlState.from_json(run.get_json(KEY))


def save(run: Store, state: ControlState) -> None:
    state.updated_at = now()
    run.put_json(KEY, state.to_json())
