"""``to_dict`` / ``from_dict`` for the frozen model configs (DiT, video DiT, router).

``from_dict`` rejects unknown keys, naming them and the known fields, so a
checkpoint written by another version fails clearly instead of half-loading.
"""
from __future__ import annotations

from dataclasses import asdict, fields


class DictConfig:
    """Mixin for ``@dataclass(frozen=True)`` configs saved in checkpoints' ``config.json``."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"{cls.__name__} has no field(s) {sorted(unknown)}; known fields: {sorted(known)}")
        return cls(**d)
