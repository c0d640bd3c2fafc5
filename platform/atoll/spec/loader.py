"""Loading a job spec: YAML -> recipe merge -> pydantic validation -> JobSpec.

Pure: reads the spec (and an expert recipe it names), writes nothing. All
problems are collected and raised together as one ``SpecError``.

Two rules stricter than plain YAML + pydantic:

* a key written twice in one mapping is an error naming its path and both lines
  (YAML itself keeps the last one silently);
* keys are camelCase, as in Kubernetes manifests: ``batch_size`` is an error that
  names the spelling to use (``batchSize``). Python code may still build the models
  with their snake_case field names.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from atoll.spec.errors import Problem, SpecError, problems_from
from atoll.spec.models import API_VERSION, ExpertsSpec, JobSpec, RouterSpec

#: the repo's recipes folder (editable installs and the source tree)
RECIPES_DIR = Path(__file__).resolve().parents[3] / "experts"


def find_recipe(name: str, base: Path | None) -> Path | None:
    """Resolves a recipe: a path (relative to the spec's folder) or a name in experts/."""
    cands = []
    p = Path(name)
    if base is not None:
        cands.append(base / p)
    cands += [p, RECIPES_DIR / p, RECIPES_DIR / f"{name}.yaml"]
    return next((c for c in cands if c.is_file()), None)


def _merge(defaults: dict, over: dict) -> dict:
    out = copy.deepcopy(defaults)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _duplicate_keys(node: yaml.Node, path: str = "", seen: set[int] | None = None) -> list[Problem]:
    """Every key repeated within one mapping of a composed YAML document, with its path and lines."""
    seen = set() if seen is None else seen
    if id(node) in seen:   # an alias of a node already checked
        return []
    seen.add(id(node))
    out: list[Problem] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[object, int] = {}
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else None
            if key == "<<":    # a merge key: its mappings are checked where they are written
                continue
            where = f"{path}.{key}" if path else str(key)
            line = k.start_mark.line + 1
            if key is not None and key in first:
                out.append(Problem(where, f"duplicate key {key!r} (lines {first[key]} and {line}); YAML would keep "
                                          "only the last one: remove one of them"))
            elif key is not None:
                first[key] = line
            out += _duplicate_keys(v, where, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out += _duplicate_keys(item, f"{path}.{i}" if path else str(i), seen)
    return out


def safe_load_unique(text: str) -> tuple[Any, list[Problem]]:
    """``yaml.safe_load`` that also reports keys repeated within a mapping (raises ``yaml.YAMLError``)."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    dups = _duplicate_keys(node) if node is not None else []
    return yaml.safe_load(text), dups


def _apply_recipe(doc: dict, base: Path | None, problems: list[Problem]) -> dict:
    body = doc.get("spec")
    experts = body.get("experts") if isinstance(body, dict) else None
    if not isinstance(experts, dict) or not experts.get("recipe"):
        return doc
    name = experts["recipe"]
    path = find_recipe(str(name), base)
    if path is None:
        problems.append(Problem("spec.experts.recipe", f"no recipe file found; give a path or one of: "
                                f"{', '.join(sorted(p.stem for p in RECIPES_DIR.glob('*.yaml'))) or 'none'}",
                                name, True))
        return doc
    try:
        recipe, dups = safe_load_unique(path.read_text())
        recipe = recipe or {}
    except yaml.YAMLError as e:
        problems.append(Problem("spec.experts.recipe", f"{path} is not valid YAML: {e}", name, True))
        return doc
    problems += [Problem("spec.experts.recipe", f"{path}: {d.path}: {d.message}") for d in dups]
    if not isinstance(recipe, dict):
        problems.append(Problem("spec.experts.recipe", f"{path} must be a mapping of experts keys", name, True))
        return doc
    doc = copy.deepcopy(doc)
    doc["spec"]["experts"] = _merge(recipe, experts)
    return doc


def _check_sizes(doc: dict) -> list[Problem]:
    """Named model sizes exist (checked against the models' own size dicts).

    Works on the raw (recipe-merged) document, so a bad size is reported with
    every other problem, not only once the rest validates."""
    out = []
    try:
        from atoll.models.names import DIT_SIZE_NAMES, ROUTER_SIZE_NAMES, VIDEO_DIT_SIZE_NAMES
    except ImportError:
        return out
    body = doc.get("spec") if isinstance(doc.get("spec"), dict) else {}

    def named(section: str, default: str):
        sec = body.get(section)
        v = sec.get("model", default) if isinstance(sec, dict) else default
        return v if isinstance(v, str) else None  # other types: pydantic reports them

    m = named("experts", ExpertsSpec.model_fields["model"].default)
    if m is not None and m not in DIT_SIZE_NAMES + VIDEO_DIT_SIZE_NAMES:
        out.append(Problem("spec.experts.model", f"unknown DiT size; use one of {', '.join(DIT_SIZE_NAMES)} (images) "
                           f"or {', '.join(VIDEO_DIT_SIZE_NAMES)} (video)", m, True))
    d = named("distill", None)
    if d is not None and d not in DIT_SIZE_NAMES:
        out.append(Problem("spec.distill.model", f"unknown DiT size for the student; use one of "
                           f"{', '.join(DIT_SIZE_NAMES)}", d, True))
    r = named("router", RouterSpec.model_fields["model"].default)
    if r is not None and r not in ROUTER_SIZE_NAMES:
        out.append(Problem("spec.router.model", f"unknown router size; use one of {', '.join(ROUTER_SIZE_NAMES)}",
                           r, True))
    return out


def parse(doc: Any, source: str = "<spec>", base: Path | None = None,
          problems: list[Problem] | None = None) -> JobSpec:
    """Validates a parsed YAML document (camelCase keys). Raises ``SpecError`` listing every problem
    (``problems``: ones found before, e.g. duplicate keys, reported with the rest)."""
    problems = list(problems or [])
    if not isinstance(doc, dict):
        raise SpecError(source, problems + [Problem("", "the spec must be a YAML mapping with apiVersion, kind, "
                                                        "metadata, spec")])
    if doc.get("apiVersion") not in (None, API_VERSION):
        problems.append(Problem("apiVersion", f"unsupported; use {API_VERSION}", doc.get("apiVersion"), True))
    doc = _apply_recipe(doc, base, problems)
    problems += _check_sizes(doc)
    try:
        spec = JobSpec.model_validate(doc, by_name=False)  # YAML keys are the camelCase aliases only
    except ValidationError as e:
        seen = {p.path for p in problems}  # e.g. apiVersion, already explained above
        problems += [p for p in problems_from(e, JobSpec) if p.path not in seen]
        raise SpecError(source, problems) from None
    if problems:
        raise SpecError(source, problems)
    return spec


def load(path: str | Path) -> JobSpec:
    """Loads and validates ``path``. Raises ``SpecError`` (never a traceback for bad input)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(str(path), [Problem("", "file not found; check the path")]) from None
    except UnicodeDecodeError as e:
        raise SpecError(str(path), [Problem("", f"not a UTF-8 text file (byte {e.start}); save the spec as UTF-8 YAML")]) from None
    except OSError as e:
        raise SpecError(str(path), [Problem("", f"cannot read the file: {e.strerror}")]) from None
    return loads(text, str(path), path.parent)


def loads(text: str, source: str = "<spec>", base: Path | None = None) -> JobSpec:
    try:
        doc, dups = safe_load_unique(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise SpecError(source, [Problem("", f"not valid YAML: {where}{getattr(e, 'problem', e)}")]) from None
    return parse(doc, source, base, problems=dups)


def dump(spec: JobSpec) -> dict:
    """The spec as a plain camelCase dict (what the YAML would say, defaults filled)."""
    return json.loads(spec.model_dump_json(by_alias=True))


def json_schema() -> dict:
    schema = JobSpec.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Atoll job spec (atoll/v1)"
    return schema
