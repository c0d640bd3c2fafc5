"""Readable spec errors: every problem with its field path, bad value and fix."""
from __future__ import annotations

import difflib
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError
from pydantic.alias_generators import to_camel


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


def _members(ann) -> list:
    """The alternatives of an annotation (Optional/Union/Annotated unwrapped)."""
    import typing

    if typing.get_origin(ann) is typing.Annotated:
        return _members(typing.get_args(ann)[0])
    if typing.get_origin(ann) in (typing.Union, getattr(__import__("types"), "UnionType", typing.Union)):
        return [m for a in typing.get_args(ann) if a is not type(None) for m in _members(a)]
    return [ann]


def _is_model(a) -> bool:
    return isinstance(a, type) and issubclass(a, BaseModel)


def _field(model: type[BaseModel], part: str):
    return next((f for n, f in model.model_fields.items() if part in (n, f.alias)), None)


def _tags(model: type[BaseModel]) -> tuple:
    import typing

    f = model.model_fields.get("type")
    return typing.get_args(f.annotation) if f is not None and typing.get_origin(f.annotation) is typing.Literal else ()


def _walk(model: type[BaseModel], loc: tuple) -> tuple[list, object]:
    """Follows a pydantic error ``loc`` through the models.

    Returns the loc as the user wrote it (union tags such as 'digits' or
    member labels such as 'int' dropped) and the model class reached, or None.
    """
    import typing

    cur: object = model
    out: list = []
    for part in loc:
        if cur is None:
            out.append(part)
            continue
        alts = _members(cur)
        models = [a for a in alts if _is_model(a)]
        if isinstance(part, int):
            out.append(part)
            seqs = [a for a in alts if typing.get_origin(a) in (list, tuple, set)]
            cur = typing.get_args(seqs[0])[0] if seqs and typing.get_args(seqs[0]) else None
            continue
        fld = next((f for m in models if (f := _field(m, part)) is not None), None)
        if fld is not None:
            out.append(part)
            cur = fld.annotation
            continue
        tagged = [m for m in models if part in _tags(m)]
        if tagged:  # a discriminated-union tag: not a key in the YAML
            cur = tagged[0]
            continue
        if len(alts) > 1:  # a plain union's member label, e.g. 'int' or "literal['auto']"
            continue
        out.append(part)  # a dict key (e.g. a label name)
        cur = None
    return out, cur


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str] | None:
    """The YAML keys allowed at ``loc`` (used to suggest fixes for unknown keys)."""
    _, cur = _walk(model, loc)
    if _is_model(cur):
        return [f.alias or n for n, f in cur.model_fields.items()]
    return None


def problems_from(err: ValidationError, model: type[BaseModel]) -> list[Problem]:
    out: list[Problem] = []
    for e in err.errors(include_url=False):
        loc = tuple(e["loc"])
        parts, _ = _walk(model, loc)
        msg = e["msg"].removeprefix("Value error, ")
        typ = e["type"]
        value = e.get("input")
        has_value = typ not in ("missing",)
        sub = getattr((e.get("ctx") or {}).get("error"), "field", None)
        if sub:  # a cross-field rule that names the field to change
            parts += sub.split(".")
            has_value = False
        if typ == "extra_forbidden":
            allowed = _fields_at(model, loc[:-1])
            key = str(loc[-1])
            msg = f"unknown key {key!r}"
            camel = to_camel(key)
            if allowed and "_" in key and camel in allowed:
                msg = f"snake_case key {key!r}: spec keys are camelCase, write {camel!r}"
            elif allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                msg += f"; did you mean {close[0]!r}?" if close else f"; allowed keys here: {', '.join(sorted(allowed))}"
            has_value = False
        elif typ == "missing":
            msg = "is required; add it"
        elif typ == "union_tag_invalid":
            msg = f"{msg}; set 'type' to one of the listed values"
            parts.append("type")
            value = (e.get("ctx") or {}).get("tag", value)
        elif typ == "union_tag_not_found":
            msg = "needs a 'type' key naming its kind"
            has_value = False
        if isinstance(value, (dict, list)):
            has_value = False  # a whole section: the message says what to change
        path = ".".join(str(p) for p in parts)
        prev = next((i for i, p in enumerate(out) if p.path == path), None)
        if prev is not None and typ not in ("extra_forbidden", "missing"):
            # one value failed every member of a plain union: one problem, all the options
            p = out[prev]
            out[prev] = Problem(path, f"{p.message}, or {msg[0].lower()}{msg[1:]}", p.value, p.has_value)
            continue
        out.append(Problem(path, msg, value, has_value))
    return out
