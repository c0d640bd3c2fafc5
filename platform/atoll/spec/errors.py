"""Readable spec errors: every problem with its field path, bad value and fix."""
from __future__ import annotations

import difflib
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError


@dataclass(frozen=True)
class Problem:
    path: str      # e.g. "spec.partition.k"
    message: str   # what is wrong and how to fix it
    value: object = None
    has_value: bool = False

    def __str__(self) -> str:
        got = f" (got {self.value!r})" if self.has_value else ""
        return f"{self.path or '<root>'}: {self.message}{got}"


class SpecError(ValueError):
    """A job spec failed to load; ``problems`` lists every issue found."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        n = len(problems)
        super().__init__(f"{source}: {n} problem{'s' if n != 1 else ''} in the job spec:\n{lines}")


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str] | None:
    """The YAML keys allowed at ``loc`` (used to suggest fixes for unknown keys)."""
    cur: object = model
    for part in loc:
        if isinstance(part, int) or not (isinstance(cur, type) and issubclass(cur, BaseModel)):
            if isinstance(part, int):
                continue
            return None
        fld = next((f for n, f in cur.model_fields.items() if part in (n, f.alias)), None)
        if fld is None:
            # a discriminated-union tag (e.g. 'image-folder') appears in the loc
            return None
        cur = _unwrap(fld.annotation, part)
    if isinstance(cur, type) and issubclass(cur, BaseModel):
        return [f.alias or n for n, f in cur.model_fields.items()]
    return None


def _unwrap(ann, _part):
    import typing

    args = [a for a in typing.get_args(ann) if a is not type(None)]
    for a in args:
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
        inner = _unwrap(a, _part)
        if inner is not None:
            return inner
    return ann if isinstance(ann, type) else None


def problems_from(err: ValidationError, model: type[BaseModel]) -> list[Problem]:
    out: list[Problem] = []
    for e in err.errors(include_url=False):
        loc = tuple(e["loc"])
        path = ".".join(str(p) for p in loc)
        msg = e["msg"].removeprefix("Value error, ")
        typ = e["type"]
        has_value = typ not in ("missing",)
        if typ == "extra_forbidden":
            parent = loc[:-1]
            # discriminated-union tags sit in loc; drop them for the path shown
            allowed = _fields_at(model, tuple(p for p in parent if not (isinstance(p, str) and "-" in p)))
            key = str(loc[-1])
            msg = f"unknown key {key!r}"
            if allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                msg += f"; did you mean {close[0]!r}?" if close else f"; allowed keys here: {', '.join(sorted(allowed))}"
            has_value = False
        elif typ == "missing":
            msg = "is required; add it"
        elif typ == "union_tag_invalid":
            msg = f"{msg}; set 'type' to one of the listed values"
        elif typ == "union_tag_not_found":
            msg = "needs a 'type' key naming its kind"
            has_value = False
        if isinstance(e.get("input"), (dict, list)):
            has_value = False  # a whole section: the message says what to change
        out.append(Problem(_clean(path), msg, e.get("input"), has_value))
    return out


def _clean(path: str) -> str:
    # "spec.data.source.fashion-mnist.path" -> "spec.data.source.path"
    parts = path.split(".")
    return ".".join(p for i, p in enumerate(parts) if not (i and "-" in p and parts[i - 1] in ("source", "features")))
