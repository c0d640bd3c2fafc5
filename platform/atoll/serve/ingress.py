"""The HTTP ingress (FastAPI on Serve): checks requests, hands each to the scheduler replica in ONE call,
encodes the answer.

Routes: ``POST /v1/generate``, ``POST /v1/images/generations`` (OpenAI), ``GET /v1/experts``,
``GET /v1/stats``, ``GET /healthz``; OpenAPI at ``/docs`` and ``/openapi.json``. Errors are JSON
``{"error": {"field", "message", "limit"?}}`` (``api_models.ErrorBody``). A replica that dies
under a request: the request is retried on another running replica (generation is deterministic:
same answer); with none left it is a 503 with ``Retry-After`` (never a hang: every call has a
timeout). With an API key (``serve.auth``) every route but ``/healthz`` and the docs needs
``Authorization: Bearer <key>`` (401 otherwise).
"""
# no `from __future__ import annotations`: FastAPI must see the real request types

import asyncio
import base64
import logging
import math
import time
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from ray import serve

from atoll.sampling.grid import grid_array, png_bytes
from atoll.sampling.video_io import VIDEO_MEDIA_TYPES, encode_video
from atoll.serve.api_models import ErrorBody, ExpertsBody, GenerateJSON, HealthBody, ImagesResponse, StatsBody
from atoll.serve.auth import bearer_dependency
from atoll.serve.openai_schema import ImagesRequest, resolve_images
from atoll.serve.routing import Unavailable, cause_of
from atoll.serve.runinfo import RunSource, deployment_name, expert_name, experts_summary, run_facts
from atoll.serve.schema import GenerateRequest, Limits, RequestError, Resolved, resolve, validation_error_body
from atoll.serve.scheduler import Outcome, Work

log = logging.getLogger("atoll.serve")
DEGRADED_HEADER = "X-Atoll-Degraded"
RETRIED_HEADER = "X-Atoll-Retried"  # the request was restarted on another replica (N times)
ERRORS = {400: {"model": ErrorBody, "description": "Malformed JSON."},
          422: {"model": ErrorBody, "description": "A request this run cannot serve (the field is named)."},
          503: {"model": ErrorBody, "description": "No replica or expert can serve it now; see Retry-After."}}
AUTH_ERRORS = {401: {"model": ErrorBody, "description": "No API key, or a wrong one (serve.auth)."}}


@dataclass(frozen=True)
class IngressOptions:
    """Failure handling: how long one request may take end to end, how often Serve's status is polled,
    how long a failed expert sits out (distributed mode), the per-call expert timeout."""

    app_name: str = "atoll"
    expert_timeout_s: float = 60.0
    request_timeout_s: float = 600.0
    retry_after_s: float = 2.0
    health_poll_s: float = 0.5
    replica_retries: int = 2
    video_fps: float = 6.0
    cold_start_timeout_s: float = 180.0  # an expert scaled to zero: how long its first call may wait
    experts_scale_to_zero: bool = False  # set by build_app: no running replica is not a failed expert


def _png(images, scale: int) -> bytes:
    """One image -> its PNG; several -> a grid PNG (ceil(sqrt(n)) per row)."""
    if images.shape[0] == 1:
        return png_bytes(images[0].numpy().transpose(1, 2, 0), scale)
    return png_bytes(grid_array(images, nrow=math.ceil(math.sqrt(images.shape[0]))), scale)


def _video(videos, fmt: str, scale: int, fps: float) -> bytes:
    """uint8 ``[B, C, T, H, W]`` -> one GIF (clips side by side, a grid of ceil(sqrt(B)) per row for
    B > 2) or the PNG frame strip (a row per clip)."""
    a = videos.numpy()
    return encode_video(a, fmt, nrow=math.ceil(math.sqrt(a.shape[0])), fps=fps, scale=scale)


def _error(status: int, message: str, field=None, headers=None) -> JSONResponse:
    return JSONResponse({"error": {"field": field, "message": message}}, status_code=status, headers=headers)


def build_api() -> FastAPI:
    """The FastAPI app with Atoll's error bodies (one per process, no module-level app)."""
    api = FastAPI(title="Atoll", description="Decentralized diffusion experts served as one model.", version="1")

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = list(exc.errors())
        status = 400 if any(e.get("type") == "json_invalid" for e in errors) else 422
        return JSONResponse(validation_error_body(errors), status_code=status)

    @api.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):  # an unparsable body, 404, 405
        return _error(exc.status_code, str(exc.detail), field="body" if exc.status_code == 400 else None,
                      headers=getattr(exc, "headers", None))

    @api.exception_handler(RequestError)
    async def _bad(request: Request, exc: RequestError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers or None)

    @api.exception_handler(Unavailable)
    async def _unavailable(request: Request, exc: Unavailable):
        return _error(503, str(exc), headers={"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))})

    @api.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.error("request failed: %s: %s", type(exc).__name__, exc)
        return _error(500, f"internal error: {type(exc).__name__}")

    return api


def make_ingress(api_key_digest: str | None = None):
    """The ingress deployment class (built in a function: FastAPI routes bind to this api only).

    ``api_key_digest``: SHA-256 of the API key (``auth.py``); None serves without a key.
    """
    api = build_api()
    deps = [bearer_dependency(api_key_digest)] if api_key_digest else []
    errs = {**ERRORS, **(AUTH_ERRORS if api_key_digest else {})}

    @serve.ingress(api)
    class Ingress:
        def __init__(self, source: RunSource, backend, limits: Limits, options: IngressOptions = IngressOptions(),
                     sequence_parallel: int = 1, mode: str = "ensemble", backend_name: str = "Ensemble",
                     model_names: tuple = ("atoll",)):
            self.source = source
            self._read_facts()
            self.backend, self.limits, self.options = backend, limits, options
            self.sequence_parallel, self.mode, self.backend_name = sequence_parallel, mode, backend_name
            self.model_names = tuple(model_names)
            self._poller: asyncio.Task | None = None
            self._running: dict[str, int] = {}

        def _read_facts(self) -> None:
            """The run's facts and per-expert summary at the registry's current version."""
            store = self.source.open()
            self.facts = run_facts(store)
            self.summary = experts_summary(store, self.facts)

        # -- Serve's status ---------------------------------------------------------
        async def _poll(self) -> None:
            from atoll.serve.status import running_replicas

            while True:
                try:
                    self._running = await asyncio.to_thread(running_replicas, self.options.app_name)
                except RuntimeError as e:  # the replica is shutting down
                    if "shutdown" in str(e):
                        return
                    log.warning("serve.status() failed: %s", e)
                except Exception as e:  # the controller may be busy; keep the last state
                    log.warning("serve.status() failed: %s", e)
                await asyncio.sleep(self.options.health_poll_s)

        def _ensure_poller(self) -> None:
            if self._poller is None or self._poller.done():
                self._poller = asyncio.get_running_loop().create_task(self._poll())

        def _replicas(self, name: str) -> int:
            return self._running.get(name, 1)  # unknown until the first poll: assume it runs

        def _expert_deployment(self, k: int) -> str:
            return deployment_name(k) if self.mode == "distributed" else self.backend_name

        # -- one call per request ---------------------------------------------------------
        async def _call(self, method: str, *args, timeout_s: float):
            from ray.exceptions import RayActorError
            from ray.serve.exceptions import BackPressureError

            self._ensure_poller()
            name, retry = self.backend_name, self.options.retry_after_s
            for attempt in range(self.options.replica_retries + 1):
                if self._replicas(name) == 0:
                    raise Unavailable(f"no replica of {name} is running; Serve is starting one, retry shortly", retry)
                resp = getattr(self.backend, method).remote(*args)
                try:
                    return await asyncio.wait_for(_awaited(resp), timeout_s), attempt
                except asyncio.TimeoutError:
                    resp.cancel()
                    raise Unavailable(f"{name} did not answer within {timeout_s:.0f} s; retry later", retry) from None
                except Exception as e:
                    err = cause_of(e)
                    if isinstance(err, (Unavailable, RequestError)):
                        raise err from None
                    if isinstance(err, BackPressureError):
                        raise Unavailable(f"every {name} replica is full; retry shortly", retry) from None
                    if not isinstance(err, RayActorError):
                        raise
                    others = self._replicas(name) - (attempt + 1)
                    if attempt >= self.options.replica_retries or others <= 0:
                        raise Unavailable(f"the {name} replica serving this request died; Serve is replacing it, "
                                          "retry shortly", retry) from None
                    log.warning("%s replica died under a request; retrying it on another", name)
            raise AssertionError("unreachable")

        async def _generate(self, r: Resolved) -> tuple[Outcome, dict, float]:
            t0 = time.perf_counter()
            work = Work(n=r.n, label=r.label, prompt=r.prompt, steps=r.steps, guidance=r.guidance, seed=r.seed,
                        strategy=r.strategy)
            out, retried = await self._call("generate", work, timeout_s=self.options.request_timeout_s)
            wall = time.perf_counter() - t0
            headers = {"X-Atoll-Seed": str(r.seed), "X-Atoll-Wall-S": f"{wall:.4f}"}
            if retried:
                headers[RETRIED_HEADER] = str(retried)
            if out.degraded:
                headers[DEGRADED_HEADER] = ",".join(expert_name(k) for k in out.degraded)
            return out, headers, wall

        def _meta(self, r: Resolved, out: Outcome, wall: float) -> dict:
            return {"n": r.n, "seed": r.seed, "steps": r.steps, "strategy": r.strategy, "guidance": r.guidance,
                    "class": r.label, "prompt": r.prompt, "size": self.facts.image_shape[-1],
                    "experts": {"rows": {expert_name(k): c for k, c in enumerate(out.expert_rows)},
                                "per_step": out.experts_per_step,
                                "degraded": [expert_name(k) for k in out.degraded]},
                    "timings": {"wall_s": round(wall, 5), "queue_s": round(out.queue_s, 5),
                                "compute_s": round(out.wall_s, 5), "mean_batch_rows": round(out.mean_tick_rows, 3)}}

        # -- routes ------------------------------------------------------------------------
        @api.post("/v1/generate", dependencies=deps, response_model=GenerateJSON, responses={
            200: {"content": {"image/png": {}, "image/gif": {}},
                  "description": "image/png (a grid for n > 1), image/gif (video runs), or JSON (format: json)."},
            **errs})
        async def generate(self, body: GenerateRequest):
            """Generates ``n`` images (``format=png``: image/png, a grid for n > 1; ``json``: base64 PNGs) or,
            for a video run, ``n`` clips (``gif``: one animated image/gif; ``png``: the frame strip;
            ``json``: base64 GIFs)."""
            r = resolve(body, self.limits, self.facts)
            out, headers, wall = await self._generate(r)
            images = out.images
            if self.facts.is_video:
                fps = self.options.video_fps
                if r.format in VIDEO_MEDIA_TYPES:
                    return Response(_video(images, r.format, r.scale, fps), media_type=VIDEO_MEDIA_TYPES[r.format],
                                    headers=headers)
                media = {"videos": [base64.b64encode(_video(images[i:i + 1], "gif", r.scale, fps)).decode()
                                    for i in range(r.n)],
                         "format": "gif", "frames": self.facts.frames, "fps": fps,
                         "sequence_parallel": self.sequence_parallel}
            elif r.format == "png":
                return Response(_png(images, r.scale), media_type="image/png", headers=headers)
            else:
                media = {"images": [base64.b64encode(_png(images[i:i + 1], r.scale)).decode() for i in range(r.n)],
                         "format": "png"}
            return JSONResponse({**media, **self._meta(r, out, wall)}, headers=headers)

        @api.post("/v1/images/generations", dependencies=deps, response_model=ImagesResponse, responses=errs)
        async def images_generations(self, body: ImagesRequest):
            """OpenAI-compatible image generation: ``{created, data: [{b64_json}]}`` (base64 PNGs)."""
            r, read_as = resolve_images(body, self.limits, self.facts, self.model_names)
            out, headers, _ = await self._generate(r)
            data = [{"b64_json": base64.b64encode(_png(out.images[i:i + 1], 1)).decode(), "revised_prompt": read_as}
                    for i in range(r.n)]
            return JSONResponse({"created": int(time.time()), "data": data}, headers=headers)

        @api.get("/v1/experts", dependencies=deps, response_model=ExpertsBody, responses=errs)
        async def experts(self):
            """The experts: partition sizes, top labels, the deployment computing each, running replicas,
            health and (from the replica asked) each expert's parallel layout."""
            desc, _ = await self._call("describe", timeout_s=30.0)
            version = desc.get("version", self.facts.version)
            if version != self.facts.version:  # the replica loaded a new version
                await asyncio.to_thread(self._read_facts)
            healthy = set(desc["healthy"])
            rows = [dict(e, deployment=self._expert_deployment(e["id"]), healthy=e["id"] in healthy,
                         running_replicas=self._running.get(self._expert_deployment(e["id"])),
                         parallel=desc["layouts"][i] if i < len(desc["layouts"]) else None)
                    for i, e in enumerate(self.summary)]
            return {"num_experts": self.facts.num_experts, "version": version,
                    "num_classes": self.facts.num_classes,
                    "class_names": list(self.facts.class_names), "image_shape": list(self.facts.image_shape),
                    "video": self.facts.is_video, "frames": self.facts.frames or None,
                    "sequence_parallel": self.sequence_parallel, "mode": self.mode, "experts": rows}

        @api.get("/v1/stats", dependencies=deps, response_model=StatsBody, responses=errs)
        async def stats(self):
            """The scheduler's counters (of the replica that answered): ticks, rows per tick, rows per expert
            forward, requests done / failed / cancelled, in flight, queued."""
            return (await self._call("stats", timeout_s=30.0))[0]

        @api.get("/healthz", response_model=HealthBody, responses={503: {"model": HealthBody,
                                                                          "description": "Nothing can serve now."}})
        async def healthz(self):
            """200 while a scheduler replica runs (and, in distributed mode, some expert has a replica), else 503."""
            self._ensure_poller()
            ok = self._replicas(self.backend_name) > 0
            cold = self.options.experts_scale_to_zero  # scaled to zero: started on the first row routed to it
            healthy = [k for k in range(self.facts.num_experts)
                       if ok and (cold or self._replicas(self._expert_deployment(k)) > 0)]
            ok = ok and bool(healthy)
            body = {"status": "ok" if ok else "unavailable", "mode": self.mode, "replicas": dict(self._running),
                    "healthy_experts": [expert_name(k) for k in healthy]}
            return JSONResponse(body, status_code=200 if ok else 503)

    return Ingress


async def _awaited(resp):
    return await resp
