"""What a job will cost, before anything runs (``atoll plan JOB.yaml``).

From the spec alone (and the committed data manifest when there is one): the models' configs,
their parameters, training FLOPs per unit, island and in total, sampling GFLOPs per image for
every strategy next to an equal-size monolith, the router's cost per denoising step as a share
of the chosen expert's, and the training memory of one worker (``atoll.train.memory``). FLOPs
come from ``atoll.models.flops`` and ``atoll.sampling.costs``, the same counts the islands'
manifests and ``SampleResult.gflops_per_image`` report.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from atoll.spec import JobSpec
from atoll.spec.models import KNOWN_SOURCE_CLASSES

#: the rule ``atoll validate`` checks: router FLOPs per step / the chosen expert's (CFG passes counted)
ROUTER_SHARE_LIMIT = 0.10
_KNOWN_SHAPES = {"fashion-mnist": (1, 28), "digits": (1, 8)}


@dataclass(frozen=True)
class DataShape:
    """One sample's shape as the models see it; ``origin`` says where it came from."""
    channels: int
    size: int
    frames: int | None
    num_classes: int
    origin: str  # "source" (known without reading) | "store" (the committed data manifest) | "assumed"
    latents: str | None = None  # latent space: how the VAE maps the images to what the models see


#: an SD-VAE's (latent channels, downsampling): what a plan assumes when latents.vae cannot be read here
SD_VAE = (4, 8)


def _vae_facts(path: str) -> tuple[int, int, str]:
    """(latent channels, downsampling, where from) of the VAE at ``path``: its local config.json, else SD-VAE's."""
    import json
    from pathlib import Path

    cfg = Path(path[len("file://"):] if path.startswith("file://") else path) / "config.json"
    try:
        c = json.loads(cfg.read_text())
        return int(c["latent_channels"]), 2 ** (len(c["block_out_channels"]) - 1), "its config.json"
    except (OSError, ValueError, KeyError, TypeError):
        return SD_VAE[0], SD_VAE[1], "assumed SD-VAE: 4 channels, 8x downsampling"


def latent_space(job: JobSpec, shape: DataShape) -> DataShape:
    """What the models see in latent space (``latents.enabled``): the VAE's channels at 1/downsampling size."""
    if not job.spec.latents.enabled:
        return shape
    from dataclasses import replace

    ch, down, origin = _vae_facts(job.spec.latents.vae)
    size = shape.size // down
    return replace(shape, channels=ch, size=size,
                   latents=f"VAE {shape.channels}x{shape.size}x{shape.size} -> {ch}x{size}x{size} ({origin})")


def data_shape(job: JobSpec, data_manifest: dict | None = None) -> DataShape:
    """The shape of the job's samples as the models see them (latents in latent space): from the committed
    data manifest if given, else from what the spec says about its source (an image folder's size and
    channels are assumed when not set)."""
    return latent_space(job, _data_shape(job, data_manifest))


def _data_shape(job: JobSpec, data_manifest: dict | None = None) -> DataShape:
    d, src = job.spec.data, job.spec.data.source
    frames = getattr(src, "frames", None) if src.type == "moving-clips" else None
    if data_manifest and data_manifest.get("image_shape"):
        c, h, w = (int(v) for v in data_manifest["image_shape"])  # clips are stored as frame strips [C, T*H, W]
        return DataShape(c, w if frames else h, frames, int(data_manifest.get("num_classes") or 0), "store")
    if src.type == "moving-clips":
        return DataShape(1, src.size, src.frames, 10, "source")
    classes = KNOWN_SOURCE_CLASSES.get(src.type, 0)
    if src.type in _KNOWN_SHAPES:
        c, size = _KNOWN_SHAPES[src.type]
        return DataShape(c, d.image_size or size, None, classes, "source")
    channels = getattr(src, "channels", "auto")
    return DataShape(3 if channels in ("auto", None) else int(channels), d.image_size or 256, None, classes or 1000,
                     "assumed")


def model_configs(job: JobSpec, shape: DataShape):
    """``(expert config, router config or None)`` the islands will build for this job."""
    from atoll.models.router import RouterConfig

    ex, classes = job.spec.experts, shape.num_classes
    cond = ex.conditioning
    if job.spec.is_video:
        from atoll.models.video_dit import VDIT_SIZES, VideoDiTConfig

        expert = VideoDiTConfig(size=ex.model, input_size=shape.size, frames=shape.frames, in_channels=shape.channels,
                                num_classes=classes if cond == "class" else 0,
                                temporal_patch=VDIT_SIZES[ex.model].get("temporal_patch", 1))
    else:
        from atoll.models.dit import DiTConfig

        expert = DiTConfig(size=ex.model, input_size=shape.size, in_channels=shape.channels,
                           num_classes=classes if cond == "class" else 0,
                           text_dim=384 if cond == "text" else None, text_mode=ex.text_mode)
    router = None
    if job.spec.num_experts > 1:
        router = RouterConfig(size=job.spec.router.model, input_size=shape.size, in_channels=shape.channels,
                              num_experts=job.spec.partition.k,
                              num_classes=classes if job.spec.router.sees_class(ex) else 0)
    return expert, router


def _params(config) -> int:
    import torch

    with torch.device("meta"):  # no memory, no init cost
        return sum(p.numel() for p in config.build().parameters())


def router_share(expert, router, cfg: bool) -> float:
    """The router's FLOPs per denoising step over the chosen expert's (x2 with classifier-free guidance)."""
    from atoll.models.flops import forward_flops

    if router is None:
        return 0.0
    return forward_flops(router) / (forward_flops(expert) * (2 if cfg else 1))


def uses_cfg(job: JobSpec) -> bool:
    """Whether sampling runs two expert passes per step (guidance != 1 on conditioned experts)."""
    return job.spec.experts.conditioning != "none" and job.spec.sample.guidance != 1.0


def router_warning(job: JobSpec, data_manifest: dict | None = None) -> str | None:
    """A sentence for ``atoll validate`` when the router costs more than ``ROUTER_SHARE_LIMIT`` of the
    chosen expert per denoising step, else None."""
    shape = data_shape(job, data_manifest)
    expert, router = model_configs(job, shape)
    share = router_share(expert, router, uses_cfg(job))
    if share <= ROUTER_SHARE_LIMIT:
        return None
    from atoll.models.router import ROUTER_SIZES

    cheaper = [s for s in ROUTER_SIZES if router_share(expert, _with_size(router, s), uses_cfg(job))
               <= ROUTER_SHARE_LIMIT]
    passes = " (both classifier-free guidance passes counted)" if uses_cfg(job) else ""
    return (f"router.model {router.size} costs {share:.0%} of a {expert.size} expert per denoising step{passes}, "
            f"above the {ROUTER_SHARE_LIMIT:.0%} that keeps top-1 sampling near a monolith's cost (DDM: a DiT-B/2 "
            f"router next to DiT-XL/2 experts is 9.7%); use a cheaper router, e.g. "
            f"{', '.join(cheaper) or 'a smaller expert-to-router ratio'} (`atoll plan` shows the costs)")


def _with_size(router, size: str):
    from dataclasses import replace

    return replace(router, size=size)


def plan(job: JobSpec, data_manifest: dict | None = None) -> dict:
    """Everything ``atoll plan`` prints, as a JSON-able dict."""
    from atoll.k8s.values import assign_experts, router_island
    from atoll.models.flops import train_flops_per_sample
    from atoll.sampling import costs
    from atoll.training_memory import training_memory

    s = job.spec
    shape = data_shape(job, data_manifest)
    expert, router = model_configs(job, shape)
    k, mono = s.num_experts, s.experts.mode == "monolith"
    ex_tr = s.experts.training
    ex_batch = ex_tr.batch_size * (s.partition.k if mono else 1)
    units = {f"expert-{e:03d}": train_flops_per_sample(expert) * ex_batch * ex_tr.steps for e in range(k)}
    experts_total = sum(units.values())
    router_flops = train_flops_per_sample(router) * s.router.training.batch_size * s.router.training.steps \
        if router is not None else 0
    islands = assign_experts(job)
    by_island = {i.name: sum(units[f"expert-{e:03d}"] for e in i.experts) for i in islands}
    if router is not None:
        home = router_island(job, islands).name if s.islands.islands else "router"
        by_island[home] = by_island.get(home, 0) + router_flops
    cfg, sm = uses_cfg(job), s.sample
    strategies = ["full"] + [f"top{n}" for n in range(1, k)] if k > 1 else ["top1"]
    mono_gflops = costs.gflops_per_image([expert], None, "top1", steps=sm.steps, sampler=sm.sampler, cfg=cfg)
    inference = {st: costs.gflops_per_image([expert] * k, router, st, steps=sm.steps, sampler=sm.sampler, cfg=cfg)
                 for st in strategies}
    expert_mem = training_memory(_params(expert), expert, s.experts.training.model_copy(update={"batch_size": ex_batch}),
                                 s.experts.scaling)
    out = {
        "job": job.name, "num_experts": k, "mode": s.experts.mode, "islands_listed": bool(s.islands.islands),
        "data": asdict(shape),
        "models": {"expert": {"size": expert.size, "params": _params(expert)},
                   "router": None if router is None else {"size": router.size, "params": _params(router),
                                                          "conditioning": "class" if router.num_classes else "none",
                                                          "tokens": router.num_tokens}},
        "training_flops": {"experts": units, "router": router_flops, "experts_total": experts_total,
                           "total": experts_total + router_flops, "by_island": by_island,
                           "router_share": router_flops / experts_total if experts_total else 0.0},
        "inference": {"steps": sm.steps, "sampler": sm.sampler, "cfg": cfg, "gflops_per_image": inference,
                      "monolith_gflops_per_image": mono_gflops,
                      "top1_over_monolith": inference["top1"] / mono_gflops,
                      "router_share_per_step": router_share(expert, router, cfg),
                      "router_share_limit": ROUTER_SHARE_LIMIT},
        "memory_per_worker": {"expert": expert_mem},
    }
    if router is not None:
        out["memory_per_worker"]["router"] = training_memory(_params(router), router, s.router.training,
                                                             s.router.scaling)
    return out
