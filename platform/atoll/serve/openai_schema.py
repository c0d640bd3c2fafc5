"""OpenAI's ``POST /v1/images/generations``: the request, and its reading as an Atoll request.

Fields: ``prompt``, ``model``, ``n``, ``size`` (``"WxH"``), ``response_format`` (``b64_json``; ``url``
is refused: the server keeps no files), ``user`` (ignored), and the extensions vLLM-Omni and
SGLang-Diffusion also take: ``seed``, ``num_inference_steps``, ``guidance_scale`` (+ Atoll's
``strategy``). The prompt is encoded by MiniLM for a text-conditioned run; for a class-conditional
run it names the class (``"Sneaker"``, ``"3"``, or a prompt in which exactly one class name appears,
``"a red sneaker"``); ``""`` is unconditional. Errors name the OpenAI field.
"""
from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from atoll.serve.schema import GenerateRequest, Limits, RequestError, Resolved, RunFacts, class_label, resolve

_SIZE = re.compile(r"\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*")
#: Atoll field -> the OpenAI field that carried it (for error messages)
_FIELDS = {"steps": "num_inference_steps", "guidance": "guidance_scale", "class": "prompt", "top_k": "strategy"}


class ImagesRequest(BaseModel):
    """``POST /v1/images/generations`` (OpenAI-compatible). Unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(max_length=4000, description="Text-conditioned runs: the text. Class-conditional runs: "
                                                     "the class name or index (or a prompt naming exactly one "
                                                     "class); empty: unconditional.")
    model: str | None = Field(None, description="'atoll' or the run's name (the served run either way).")
    n: int = Field(1, description="Number of images (1..serve.maxSamples).")
    size: str | None = Field(None, description="'WxH'; must be the trained size (e.g. '28x28').")
    response_format: Literal["b64_json", "url"] | None = Field(
        "b64_json", description="b64_json only (base64 PNGs in the answer); url is not offered.")
    user: str | None = Field(None, max_length=256, description="Ignored (accepted for OpenAI clients).")
    seed: int = Field(0, ge=0, lt=2**63, description="Extension: image i starts from noise seeded by (seed, i).")
    num_inference_steps: int | None = Field(None, description="Extension: Euler steps (1..serve.maxSteps).")
    guidance_scale: float = Field(1.0, ge=0.0, le=50.0, description="Extension: classifier-free guidance (1 = off).")
    strategy: str = Field("top1", description="Extension: routing strategy, full or top1 .. topK.")


def prompt_class(prompt: str, facts: RunFacts) -> tuple[int | None, str | None]:
    """A class-conditional run's reading of ``prompt``: ``(label, class name)``; ``("", None)`` is unconditional."""
    text = prompt.strip()
    if not text or facts.num_classes == 0:
        if text:
            raise RequestError("prompt", "this run is unconditional; send an empty prompt", limit="")
        return None, None
    names = list(facts.class_names[: facts.num_classes])
    try:
        k = class_label(text, facts, field="prompt")
    except RequestError as exact_miss:
        words = set(re.findall(r"[\w-]+", text.lower()))
        hits = [i for i, c in enumerate(names) if set(re.findall(r"[\w-]+", c.lower())) <= words]
        if len(hits) != 1:
            raise RequestError("prompt", f"this run is class-conditional; the prompt must name one of its classes "
                                         f"(found {len(hits)} in {text[:80]!r})", limit=names) from exact_miss
        k = hits[0]
    return k, names[k]


def resolve_images(req: ImagesRequest, limits: Limits, facts: RunFacts, model_names: tuple[str, ...]) -> tuple[
        Resolved, str | None]:
    """The request as an Atoll ``Resolved`` plus the prompt's reading (class name), or ``RequestError``."""
    if req.model is not None and req.model not in model_names:
        raise RequestError("model", f"model {req.model!r} is not served here", limit=list(model_names))
    if req.response_format == "url":
        raise RequestError("response_format", "response_format 'url' is not offered (the server keeps no files); "
                                              "use b64_json", limit=["b64_json"])
    if facts.is_video:
        raise RequestError("prompt", "this run generates videos; use POST /v1/generate (GIF or JSON)")
    size = None
    if req.size is not None:
        m = _SIZE.fullmatch(req.size)
        side = facts.image_shape[-1]
        if m is None or m.group(1) != m.group(2) or int(m.group(1)) != side:
            raise RequestError("size", f"size {req.size!r} is not this run's image size; use '{side}x{side}'",
                               limit=f"{side}x{side}")
        size = side
    label, name, prompt = None, None, None
    if facts.text_conditioned:
        prompt = req.prompt if req.prompt.strip() else None
    else:
        label, name = prompt_class(req.prompt, facts)
    body = GenerateRequest.model_validate({"class": label, "prompt": prompt, "n": req.n, "size": size,
                                           "steps": req.num_inference_steps, "guidance": req.guidance_scale,
                                           "seed": req.seed, "strategy": req.strategy, "format": "json"})
    try:
        return resolve(body, limits, facts), name
    except RequestError as e:
        field = _FIELDS.get(e.field, e.field)
        message = e.message.replace("steps = ", "num_inference_steps = ")
        raise RequestError(field, message, e.limit, e.status) from e
