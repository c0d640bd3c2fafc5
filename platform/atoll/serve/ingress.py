"""The HTTP ingress (FastAPI on Serve): validates requests and runs the denoising loop over the
Router and Expert deployments' handles.

Routes: ``POST /v1/generate``, ``GET /v1/experts``, ``GET /healthz``; OpenAPI at ``/docs``
and ``/openapi.json``. Errors are JSON ``{"error": {"field", "message", "limit"?}}``.
Image runs answer PNG (or JSON with base64 PNGs); video runs answer an animated GIF, a PNG
frame strip, or JSON with base64 GIFs.
"""
# no `from __future__ import annotations`: FastAPI must see the real GenerateRequest type

import asyncio
import base64
import logging
import math
import time
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve

from atoll.sampling.grid import grid_array, png_bytes, to_uint8
from atoll.sampling.video_io import VIDEO_MEDIA_TYPES, encode_video
from atoll.serve.denoise import Health, NoHealthyExpert, denoise
from atoll.serve.runinfo import RunSource, deployment_name, expert_name, experts_summary, run_facts
from atoll.serve.schema import GenerateRequest, Limits, RequestError, resolve, validation_error_body

log = logging.getLogger("atoll.serve")
DEGRADED_HEADER = "X-Atoll-Degraded"


@dataclass(frozen=True)
class IngressOptions:
    """Failure handling of the ingress: per-call expert timeout, how long a failed expert sits out,
    how often Serve's status is polled for experts without running replicas."""

    app_name: str = "atoll"
    expert_timeout_s: float = 30.0
    retry_after_s: float = 2.0
    health_poll_s: float = 0.5
    video_fps: float = 6.0


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


def build_api() -> FastAPI:
    """The FastAPI app with Atoll's error bodies (one per process, no module-level app)."""
    api = FastAPI(title="Atoll", description="Decentralized diffusion experts served as one model.",
                  version="1")

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = list(exc.errors())
        status = 400 if any(e.get("type") == "json_invalid" for e in errors) else 422
        return JSONResponse(validation_error_body(errors), status_code=status)

    @api.exception_handler(RequestError)
    async def _bad(request: Request, exc: RequestError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @api.exception_handler(NoHealthyExpert)
    async def _unavailable(request: Request, exc: NoHealthyExpert):
        return JSONResponse({"error": {"field": None, "message": str(exc)}}, status_code=503,
                            headers={"Retry-After": "2"})

    @api.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("request failed")
        return JSONResponse({"error": {"field": None, "message": f"internal error: {type(exc).__name__}"}},
                            status_code=500)

    return api


def make_ingress():
    """The ingress deployment class (built in a function: FastAPI routes bind to this api only)."""
    api = build_api()

    @serve.ingress(api)
    class Ingress:
        def __init__(self, source: RunSource, router, experts: list, limits: Limits,
                     options: IngressOptions = IngressOptions(), sequence_parallel: int = 1):
            store = source.open()
            self.facts = run_facts(store)
            self.sequence_parallel = sequence_parallel
            self.summary = experts_summary(store, self.facts)
            self.router, self.experts, self.limits, self.options = router, list(experts), limits, options
            self.health = Health(self.facts.num_experts, options.retry_after_s)
            self._poller: asyncio.Task | None = None
            self._running: dict[str, int] = {}

        # -- health ------------------------------------------------------------
        async def _poll(self) -> None:
            from atoll.serve.status import running_replicas

            while True:
                try:
                    self._running = await asyncio.to_thread(running_replicas, self.options.app_name)
                    self.health.set_status_down({k for k in range(self.facts.num_experts)
                                                 if self._running.get(deployment_name(k), 1) == 0})
                except RuntimeError as e:  # the replica is shutting down
                    if "shutdown" in str(e):
                        return
                    log.warning("serve.status() failed: %s", e)
                except Exception:  # the controller may be busy; keep the last state
                    log.warning("serve.status() failed", exc_info=True)
                await asyncio.sleep(self.options.health_poll_s)

        def _ensure_poller(self) -> None:
            if self._poller is None or self._poller.done():
                self._poller = asyncio.get_running_loop().create_task(self._poll())

        # -- calls to the model deployments ----------------------------------------
        async def _route(self, x, t, y=None):
            return await self.router.route.remote((x, t, y))

        async def _expert(self, k, x, t, y, guidance):
            return await asyncio.wait_for(self.experts[k].velocity.remote((x, t, y, guidance)),
                                          self.options.expert_timeout_s)

        # -- routes ------------------------------------------------------------
        @api.post("/v1/generate", responses={200: {"content": {"image/png": {}, "image/gif": {}}}})
        async def generate(self, body: GenerateRequest):
            """Generates ``n`` images (``format=png``: image/png, a grid for n > 1; ``json``: base64 PNGs) or,
            for a video run, ``n`` clips (``gif``: one animated image/gif; ``png``: the frame strip;
            ``json``: base64 GIFs)."""
            self._ensure_poller()
            r = resolve(body, self.limits, self.facts)
            t0 = time.perf_counter()
            out = await denoise(self.facts.image_shape, r.n, r.label, steps=r.steps, guidance=r.guidance,
                                seed=r.seed, strategy=r.strategy, num_experts=self.facts.num_experts,
                                route=self._route, expert=self._expert, health=self.health)
            images = to_uint8(out.images)
            wall = time.perf_counter() - t0
            headers = {"X-Atoll-Seed": str(r.seed), "X-Atoll-Wall-S": f"{wall:.4f}"}
            if out.degraded:
                headers[DEGRADED_HEADER] = ",".join(expert_name(k) for k in sorted(out.degraded))
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
            return JSONResponse({
                **media, "n": r.n, "seed": r.seed, "steps": r.steps, "strategy": r.strategy,
                "guidance": r.guidance, "class": r.label, "size": self.facts.image_shape[-1],
                "experts": {"rows": {expert_name(k): c for k, c in enumerate(out.expert_rows)},
                            "per_step": out.experts_per_step,
                            "degraded": [expert_name(k) for k in sorted(out.degraded)]},
                "timings": {"wall_s": round(wall, 5), "router_s": round(out.router_s, 5),
                            "experts_s": round(out.experts_s, 5)}}, headers=headers)

        async def _describe(self, k: int):
            try:
                return await asyncio.wait_for(self.experts[k].describe.remote(),
                                              min(5.0, self.options.expert_timeout_s))
            except Exception as e:  # a replica down or restarting
                log.warning("describe of expert %d failed: %s", k, e)
                return None

        @api.get("/v1/experts")
        async def experts(self):
            """The experts: partition sizes, top labels, running replicas, health and (per replica asked)
            the parallel layout (sequence-parallel degree, the ranks' world size and processes)."""
            self._ensure_poller()
            healthy = set(self.health.healthy())
            layouts = await asyncio.gather(*[self._describe(k) for k in range(self.facts.num_experts)])
            rows = [dict(e, healthy=e["id"] in healthy, running_replicas=self._running.get(e["deployment"]),
                         parallel=layouts[i]) for i, e in enumerate(self.summary)]
            return {"num_experts": self.facts.num_experts, "num_classes": self.facts.num_classes,
                    "class_names": list(self.facts.class_names), "image_shape": list(self.facts.image_shape),
                    "video": self.facts.is_video, "frames": self.facts.frames or None,
                    "sequence_parallel": self.sequence_parallel, "experts": rows}

        @api.get("/healthz")
        async def healthz(self):
            """200 while at least one expert can take rows, else 503."""
            self._ensure_poller()
            healthy = self.health.healthy()
            body = {"status": "ok" if healthy else "unavailable",
                    "healthy_experts": [expert_name(k) for k in healthy]}
            return JSONResponse(body, status_code=200 if healthy else 503)

    return Ingress
