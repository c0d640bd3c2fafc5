"""The HTTP schema: request/response models and the checks that need the run (limits, classes, size).

Pydantic checks the shape of a request (types, unknown fields); ``resolve`` then checks it
against the served run and the configured limits and returns a ``Resolved`` request, or raises
``RequestError(field, message, limit)``, which the ingress turns into a 4xx JSON body::

    {"error": {"field": "n", "message": "n = 99 is over the limit", "limit": 16}}
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_STRATEGY = re.compile(r"full|top([1-9][0-9]*)")


class RequestError(ValueError):
    """A request the run cannot serve; ``status`` 422 unless said otherwise (401: no or a wrong API key)."""

    def __init__(self, field: str, message: str, limit: Any = None, status: int = 422,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.field, self.message, self.limit, self.status = field, message, limit, status
        self.headers = dict(headers or {})

    def body(self) -> dict:
        err = {"field": self.field, "message": self.message}
        if self.limit is not None:
            err["limit"] = self.limit
        return {"error": err}


class GenerateRequest(BaseModel):
    """``POST /v1/generate``. Unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    class_: int | str | None = Field(None, alias="class", description="Class index or name; omit for unconditional.")
    prompt: str | None = Field(None, description="Text prompt (text-conditioned runs only; encoded by MiniLM).")
    n: int = Field(1, description="Number of images (1..serve.max_samples).")
    steps: int | None = Field(None, description="Euler steps (1..serve.max_steps); default serve.default_steps.")
    guidance: float = Field(1.0, ge=0.0, le=50.0, description="Classifier-free guidance scale (1 = off).")
    seed: int = Field(0, ge=0, lt=2**63, description="Sample i starts from noise seeded by (seed, i).")
    strategy: str = Field("top1", description="full, top1, top2, ... topK.")
    top_k: int | None = Field(None, description="Shorthand for strategy topN.")
    size: int | None = Field(None, description="Image (frame) side; must equal the trained size when given.")
    frames: int | None = Field(None, description="Video runs: frames per clip; must equal the trained frames "
                                                 "when given.")
    format: Literal["png", "json", "gif", "mp4"] | None = Field(
        None, description="Image runs (default png): png = one image/png grid, json = base64 PNGs + metadata. "
                          "Video runs (default gif): gif = one animated image/gif (clips side by side / in a "
                          "grid), mp4 = the same as one video/mp4 (H.264), png = the frame strip (a row per clip, "
                          "a column per frame), json = base64 GIFs + metadata.")
    scale: int = Field(1, ge=1, le=32, description="Nearest-neighbour upscale of the returned PNGs / GIFs.")


@dataclass(frozen=True)
class Limits:
    max_samples: int
    max_steps: int
    default_steps: int


@dataclass(frozen=True)
class RunFacts:
    """What the ingress knows about the run without loading weights.

    ``image_shape``: one sample's shape, ``(C, H, W)``, or ``(C, T, H, W)`` for a video run
    (``frames`` = T > 0). A latent-space run also has ``latent_shape``, what the models sample
    (``image_shape`` is then the decoded images').
    """

    num_experts: int
    num_classes: int
    class_names: tuple[str, ...]
    image_shape: tuple[int, ...]
    text_conditioned: bool
    frames: int = 0
    latent_shape: tuple[int, ...] | None = None
    expert_ids: tuple[int, ...] = ()   # served expert k is the run's expert expert_ids[k] (experts/registry.json)
    version: int = 1                   # the registry's version served

    @property
    def model_shape(self) -> tuple[int, ...]:
        """What the experts sample: the latent shape of a latent-space run, else ``image_shape``."""
        return self.latent_shape or self.image_shape

    @property
    def is_video(self) -> bool:
        return self.frames > 0


@dataclass(frozen=True)
class Resolved:
    label: int | None
    n: int
    steps: int
    guidance: float
    seed: int
    strategy: str
    format: str
    scale: int
    prompt: str | None = None


def _strategy(req: GenerateRequest, k: int) -> str:
    strategy = req.strategy
    if req.top_k is not None:
        if req.top_k < 1 or req.top_k > k:
            raise RequestError("top_k", f"top_k = {req.top_k} is out of range; this run has {k} experts", limit=k)
        if "strategy" in req.model_fields_set and req.strategy != f"top{req.top_k}":
            raise RequestError("top_k", f"top_k = {req.top_k} contradicts strategy {req.strategy!r}; pass one of them")
        strategy = f"top{req.top_k}"
    m = _STRATEGY.fullmatch(strategy)
    if m is None:
        raise RequestError("strategy", f"strategy {strategy!r} is unknown; use full, top1 .. top{k}",
                           limit=["full"] + [f"top{i}" for i in range(1, k + 1)])
    if m.group(1) and int(m.group(1)) > k and k > 1:
        raise RequestError("strategy", f"strategy {strategy!r} needs {m.group(1)} experts; this run has {k}",
                           limit=["full"] + [f"top{i}" for i in range(1, k + 1)])
    return strategy


def _label(req: GenerateRequest, facts: RunFacts) -> int | None:
    if req.prompt is not None:
        if not facts.text_conditioned:
            raise RequestError("prompt", "this run is not text-conditioned; pass a class instead of a prompt")
        if req.class_ is not None:
            raise RequestError("class", "pass either a prompt or a class, not both")
        return None
    if req.class_ is None:
        return None
    if facts.text_conditioned:
        raise RequestError("class", "this run is text-conditioned: pass a prompt (e.g. \"a sneaker\") instead of a "
                                    "class")
    return class_label(req.class_, facts)


def class_label(value: int | str, facts: RunFacts, field: str = "class") -> int:
    """A class by index (``3``, ``"3"``) or name (case-insensitive); ``RequestError`` naming ``field``."""
    names = list(facts.class_names[: facts.num_classes])
    if facts.num_classes == 0:
        raise RequestError(field, f"this run is unconditional; leave the {field} out", limit=0)
    s = str(value).strip()
    if isinstance(value, int) or s.lstrip("-").isdigit():
        k = int(s)
        if not 0 <= k < facts.num_classes:
            raise RequestError(field, f"class {k} is out of range 0..{facts.num_classes - 1}", limit=names or
                               facts.num_classes - 1)
        return k
    lower = [c.lower() for c in names]
    if s.lower() not in lower:
        raise RequestError(field, f"class {s!r} is unknown", limit=names)
    return lower.index(s.lower())


def resolve(req: GenerateRequest, limits: Limits, facts: RunFacts) -> Resolved:
    """Checks ``req`` against the run and the limits; raises ``RequestError`` naming the field."""
    if not 1 <= req.n <= limits.max_samples:
        raise RequestError("n", f"n = {req.n} is outside 1..{limits.max_samples} (serve.max_samples)",
                           limit=limits.max_samples)
    steps = limits.default_steps if req.steps is None else req.steps
    if not 1 <= steps <= limits.max_steps:
        raise RequestError("steps", f"steps = {steps} is outside 1..{limits.max_steps} (serve.max_steps)",
                           limit=limits.max_steps)
    side = facts.image_shape[-1]
    if req.size is not None and req.size != side:
        what = f"{facts.frames}-frame {side}x{side} clips" if facts.is_video else f"{side}x{side} images"
        raise RequestError("size", f"size = {req.size}, but this run generates {what} (trained size {side})",
                           limit=side)
    if req.frames is not None and not facts.is_video:
        raise RequestError("frames", f"frames = {req.frames}, but this run generates images, not videos; "
                                     "leave frames out")
    if req.frames is not None and req.frames != facts.frames:
        raise RequestError("frames", f"frames = {req.frames}, but this run generates {facts.frames}-frame clips "
                                     f"(trained frames {facts.frames})", limit=facts.frames)
    fmt = req.format or ("gif" if facts.is_video else "png")
    if fmt in ("gif", "mp4") and not facts.is_video:
        raise RequestError("format", f"format = {fmt!r} is for video runs; this run generates images: use png or json",
                           limit=["png", "json"])
    label = _label(req, facts)
    return Resolved(label=label, n=req.n, steps=steps, guidance=float(req.guidance), seed=req.seed,
                    strategy=_strategy(req, facts.num_experts), format=fmt, scale=req.scale, prompt=req.prompt)


def validation_error_body(errors: list[dict]) -> dict:
    """A FastAPI/pydantic validation error list as one ``{"error": {...}}`` body (first error, all in ``details``)."""
    first = errors[0] if errors else {"loc": ["body"], "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", []) if p != "body"]
    err = {"field": ".".join(loc) or "body", "message": str(first.get("msg", "invalid request")),
           "details": [{"field": ".".join(str(p) for p in e.get("loc", []) if p != "body") or "body",
                        "message": str(e.get("msg"))} for e in errors]}
    ctx = first.get("ctx") or {}
    for key in ("le", "lt", "ge", "gt", "expected"):
        if key in ctx:
            err["limit"] = ctx[key] if isinstance(ctx[key], (int, float, str)) else str(ctx[key])
            break
    return {"error": err}
