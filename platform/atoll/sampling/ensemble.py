"""The ensemble of experts served as one model: ``v(x_t, t) = sum_k r_k(x_t, t) v_k(x_t, t)``.

Per model evaluation (the pieces are public so the Serve deployments reuse them):

1. ``route(x_t, t) -> probs [B, K]``            the router's softmax (ones for one expert);
2. ``select(probs, strategy) -> (idx, w)``       ``[B, k]`` experts and weights (``strategies.py``);
3. ``expert_velocity(k, x, t, y, guidance)``     one expert on the rows that chose it, with CFG
   ``v = v_u + g (v_c - v_u)`` (null class ``num_classes``) when ``g != 1``;
4. ``velocity(...)`` = 1-3 combined: rows are grouped by expert, so only the chosen experts run
   and each only on its rows (top-1 costs one expert forward per sample + the router);

then one sampler step (Euler or Heun, ``atoll.models.samplers``).

Shapes: ``x_t [B, C, H, W]`` float, ``t [B]`` in [0, 1], ``y [B]`` long class labels or None.
Text-conditioned experts take ``text = (states [B, L, 384], mask [B, L])`` instead of ``y``
(prompts encoded once by MiniLM; the null text, an all-False mask, is the CFG baseline).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from atoll.models.samplers import SAMPLERS, make_sampler
from atoll.sampling import costs
from atoll.sampling.errors import SamplingError
from atoll.sampling.grid import to_uint8
from atoll.sampling.noise import initial_noise
from atoll.sampling.result import SampleResult
from atoll.sampling.strategies import num_selected, select
from atoll.sampling.trace import Trace, TraceStep
from atoll.store import S3Config, Store


class Ensemble:
    """K experts (DiTs of one shape) and a router (None for a single expert / monolith)."""

    def __init__(self, experts: Sequence[nn.Module], router: nn.Module | None = None, *,
                 class_names: Sequence[str] | None = None, device: str | torch.device = "cpu", source: str = "",
                 decoder=None):
        if len(experts) < 1:
            raise SamplingError("an ensemble needs at least one expert")
        if len(experts) > 1 and router is None:
            raise SamplingError(f"{len(experts)} experts need a router; train it (the router stage of `atoll run`)")
        shapes = {(e.config.in_channels, e.config.input_size, e.config.num_classes) for e in experts}
        if len(shapes) != 1:
            raise SamplingError(f"the experts disagree on (channels, size, num_classes): {sorted(shapes)}")
        if router is not None and router.config.num_experts != len(experts):
            raise SamplingError(f"the router was trained for {router.config.num_experts} experts, "
                                f"but there are {len(experts)}; retrain the router")
        self.device = torch.device(device)
        self.experts = [e.to(self.device).eval() for e in experts]
        self.router = router.to(self.device).eval() if router is not None else None
        self.class_names = list(class_names or [])
        self.source = source
        self.decoder = decoder  # latent space: the run's VAE decoder (``atoll.sampling.latent``), else None
        self._rows = [0] * len(self.experts)
        self._router_rows = 0
        self._text_encoder = None

    # -- loading ---------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, run_uri: str | Store, *, s3: S3Config | None = None,
                        device: str | torch.device = "cpu", weights: str = "model",
                        step: int | None = None) -> "Ensemble":
        """Loads every expert (``experts/00k/model``, EMA weights) and the router of a run.

        ``run_uri``: ``./runs/quickstart``, ``file:///...``, ``s3://bucket/prefix/quickstart``, a job
        YAML, or a ``Store`` rooted at the run. A monolith run gives one expert and no router.
        ``step``: the experts' training snapshots at that step (``training.snapshotEvery``) with
        the final router. Raises ``RunNotFound`` naming the URI and the fix when something is missing.
        """
        from atoll.models.checkpoint import from_pretrained
        from atoll.sampling.runs import inspect_run, open_run_uri, require_checkpoint

        store = open_run_uri(run_uri, s3)
        info = inspect_run(store)
        prefixes = [require_checkpoint(store, k, info.total_experts, step) for k in info.expert_ids]
        router_prefix = (require_checkpoint(store, None, info.num_experts, router_prefix=info.router_prefix)
                         if info.num_experts > 1 else None)
        experts = [from_pretrained(store, p, weights=weights, map_location=device) for p in prefixes]
        router = from_pretrained(store, router_prefix, map_location=device) if router_prefix else None
        names = info.class_names or [str(i) for i in range(experts[0].config.num_classes)]
        decoder = None
        if info.latents is not None:
            from atoll.sampling.latent import load_decoder

            decoder = load_decoder(store, info.latents, torch.device(device), s3)
        return cls(experts, router, class_names=names, device=device, source=store.uri, decoder=decoder)

    def only(self, k: int) -> "Ensemble":
        """Expert ``k`` alone (no router): every strategy is that expert."""
        if not 0 <= k < self.num_experts:
            raise SamplingError(f"expert {k} does not exist; this ensemble has experts 0..{self.num_experts - 1}")
        return Ensemble([self.experts[k]], None, class_names=self.class_names, device=self.device,
                        source=f"{self.source}#expert-{k:03d}", decoder=self.decoder)

    # -- shape facts -----------------------------------------------------------
    @property
    def num_experts(self) -> int:
        return len(self.experts)

    @property
    def num_classes(self) -> int:
        """0 for unconditional experts; class ``num_classes`` is the null class."""
        return int(self.experts[0].config.num_classes)

    @property
    def is_text(self) -> bool:
        """True when the experts are conditioned on text (prompts) rather than classes."""
        return getattr(self.experts[0].config, "text_dim", None) is not None

    def encode_prompts(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """MiniLM token states ``[N, L, 384]`` and mask ``[N, L]`` (the encoder loads once)."""
        if not self.is_text:
            raise SamplingError("this run is not text-conditioned; pass a class instead of a prompt")
        if self._text_encoder is None:
            from atoll.models.text import TextEncoder

            self._text_encoder = TextEncoder(device=str(self.device))
        states, mask = self._text_encoder.encode([str(p) for p in prompts])
        return states.to(self.device), mask.to(self.device)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """One sample's shape: ``(C, H, W)``, or ``(C, T, H, W)`` for video experts."""
        c = self.experts[0].config
        if self.is_video:
            return (c.in_channels, c.frames, c.input_size, c.input_size)
        return (c.in_channels, c.input_size, c.input_size)

    @property
    def output_shape(self) -> tuple[int, ...]:
        """One returned sample's shape: ``image_shape``, or the decoded image's for a latent-space run."""
        return tuple(self.decoder.image_shape) if self.decoder is not None else self.image_shape

    @property
    def is_video(self) -> bool:
        """True when the experts are video DiTs (samples ``[N, C, T, H, W]``)."""
        return hasattr(self.experts[0].config, "frames")

    def check_strategy(self, strategy: str) -> int:
        """Experts evaluated per sample per step; ``SamplingError`` for a bad strategy."""
        return num_selected(strategy, self.num_experts)

    def class_index(self, name_or_index: str | int) -> int:
        """A class by index (``3``, ``"3"``) or name (``"Sneaker"``, case-insensitive)."""
        s = str(name_or_index).strip()
        if s.lstrip("-").isdigit():
            k = int(s)
        else:
            lower = [n.lower() for n in self.class_names]
            if s.lower() not in lower:
                raise SamplingError(f"class {s!r} is unknown; {self._classes_hint()}")
            k = lower.index(s.lower())
        self.check_labels(torch.tensor([k]))
        return k

    def _classes_hint(self) -> str:
        if self.num_classes == 0:
            return "this model is unconditional (no classes); leave the class out"
        names = ", ".join(f"{i}={n}" for i, n in enumerate(self.class_names[: self.num_classes]))
        return f"this run has {self.num_classes} classes: {names or f'0..{self.num_classes - 1}'}"

    def check_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """``labels [N]`` as long on the device; ``SamplingError`` if one is out of range."""
        labels = torch.as_tensor(labels).long().reshape(-1)
        bad = labels[(labels < 0) | (labels >= self.num_classes)] if self.num_classes else labels
        if bad.numel():
            raise SamplingError(f"class {int(bad[0])} is out of range; {self._classes_hint()}")
        return labels.to(self.device)

    # -- one model evaluation ------------------------------------------------
    @torch.no_grad()
    def route(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Router probabilities ``[B, K]`` float32 (all ones ``[B, 1]`` for a single expert);
        a class-conditional router also sees ``y`` (None: the null class)."""
        if self.num_experts > 1:
            self._router_rows += x_t.shape[0]
        return route_probs(self.router if self.num_experts > 1 else None, x_t, t, y)

    def select(self, probs: torch.Tensor, strategy: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(indices [B, k], weights [B, k])`` for ``strategy`` (see ``strategies.select``)."""
        return select(probs, strategy)

    @torch.no_grad()
    def expert_velocity(self, k: int, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None,
                        guidance: float = 1.0, text: tuple[torch.Tensor, torch.Tensor] | None = None
                        ) -> torch.Tensor:
        """Expert ``k``'s velocity ``[B, C, H, W]``; with ``y`` (or ``text``) and ``guidance != 1`` one
        batched pass of ``[cond; null]`` rows and ``v_u + g (v_c - v_u)``."""
        cond = y is not None or text is not None
        self._rows[k] += 2 * x.shape[0] if cond and guidance != 1.0 else x.shape[0]
        return expert_forward(self.experts[k], x, t, y, guidance, self.num_classes, text=text)

    @torch.no_grad()
    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, guidance: float = 1.0,
                 strategy: str = "top1", text: tuple[torch.Tensor, torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, TraceStep]:
        """The ensemble velocity ``[B, C, H, W]`` and what was used (``TraceStep``).

        Each expert runs once, on the rows that selected it; its output is added with the
        row's weight. Experts are visited in index order, so the sum is deterministic.
        """
        probs = self.route(x_t, t, y)
        idx, w = self.select(probs, strategy)
        groups = group_rows(idx, self.num_experts)
        outs = [self.expert_velocity(k, x_t[rows], t[rows], None if y is None else y[rows], guidance,
                                     None if text is None else (text[0][rows], text[1][rows]))
                for k, rows, _ in groups]
        return combine(x_t, w, groups, outs), TraceStep(t=t.detach(), probs=probs, indices=idx, weights=w)

    # -- costs -----------------------------------------------------------------
    def gflops_per_image(self, strategy: str, *, steps: int, sampler: str = "euler", guidance: float = 1.0,
                         conditional: bool = True) -> float:
        """Analytic GFLOPs of sampling one image (router + selected experts, x2 experts with CFG)."""
        cfg = conditional and self.num_classes > 0 and guidance != 1.0
        return costs.gflops_per_image([e.config for e in self.experts],
                                      self.router.config if self.router is not None else None, strategy,
                                      steps=steps, sampler=sampler, cfg=cfg)

    # -- sampling --------------------------------------------------------------
    def _labels(self, n: int | Sequence[int] | torch.Tensor | None,
                class_labels: int | Sequence[int] | torch.Tensor | None) -> tuple[int, torch.Tensor | None]:
        if n is not None and not isinstance(n, int):
            if class_labels is not None:
                raise SamplingError("pass labels either as the first argument or as class_labels, not both")
            n, class_labels = None, n
        if class_labels is None:
            if n is None or n < 1:
                raise SamplingError(f"n must be >= 1, got {n}")
            return n, None
        labels = torch.as_tensor(class_labels).long().reshape(-1)
        if labels.numel() == 1 and n is not None:
            labels = labels.expand(n).clone()
        if n is not None and labels.numel() != n:
            raise SamplingError(f"got {labels.numel()} class labels for n={n}; pass one label or n labels")
        if labels.numel() < 1:
            raise SamplingError("no samples requested: pass n >= 1 or a non-empty list of labels")
        return labels.numel(), self.check_labels(labels)

    @torch.no_grad()
    def sample(self, n: int | Sequence[int] | torch.Tensor | None = None, *, strategy: str = "top1",
               steps: int = 32, sampler: str = "euler", guidance: float = 1.0, seed: int = 0,
               class_labels: int | Sequence[int] | torch.Tensor | None = None, return_trace: bool = False,
               output: str = "uint8", batch_size: int = 64, start_index: int = 0,
               progress: Callable[[int], None] | None = None,
               prompts: str | Sequence[str] | None = None) -> SampleResult:
        """Draws ``n`` images (or one per label when ``n`` is a list of labels).

        ``class_labels``: one class for all, or one per sample; None = unconditional (null class).
        Sample ``i`` starts from noise seeded by ``(seed, start_index + i)`` only, so results do
        not depend on ``batch_size``. ``output``: ``"uint8"`` ``[N, C, H, W]`` in [0, 255] or
        ``"float"`` in [-1, 1]. ``progress(k)`` is called after every sampler step of a batch.
        ``prompts`` (text-conditioned runs): one prompt for all samples, or one per sample.
        """
        text = None
        if prompts is not None:
            prompts = [prompts] if isinstance(prompts, str) else list(prompts)
            if class_labels is not None or (n is not None and not isinstance(n, int)):
                raise SamplingError("pass either prompts or class labels, not both")
            n = n if n is not None else len(prompts)
            if len(prompts) == 1:
                prompts = prompts * n
            if len(prompts) != n:
                raise SamplingError(f"got {len(prompts)} prompts for n={n}; pass one prompt or n prompts")
            text = self.encode_prompts(prompts)
        elif self.is_text and (class_labels is not None or (n is not None and not isinstance(n, int))):
            raise SamplingError("this run is text-conditioned: pass prompts (e.g. --prompt 'a sneaker'), not classes")
        count, labels = self._labels(n, class_labels)
        self.check_strategy(strategy)
        if sampler not in SAMPLERS:
            raise SamplingError(f"sampler {sampler!r} is unknown; use one of {', '.join(SAMPLERS)}")
        if steps < 1:
            raise SamplingError(f"steps must be >= 1, got {steps}")
        if guidance < 0:
            raise SamplingError(f"guidance must be >= 0 (1 = off), got {guidance}")
        if output not in ("uint8", "float"):
            raise SamplingError(f"output must be 'uint8' or 'float', got {output!r}")
        if batch_size < 1:
            raise SamplingError(f"batch_size must be >= 1, got {batch_size}")
        self._rows, self._router_rows = [0] * self.num_experts, 0
        t0 = time.perf_counter()
        outs, traces = [], []
        for lo in range(0, count, batch_size):
            hi = min(count, lo + batch_size)
            x = initial_noise(self.image_shape, seed, range(start_index + lo, start_index + hi)).to(self.device)
            y = None if labels is None else labels[lo:hi]
            tx = None if text is None else (text[0][lo:hi], text[1][lo:hi])
            x, tr = self._integrate(x, y, strategy, steps, sampler, guidance, return_trace, progress, tx)
            if self.decoder is not None:  # latent space: the run's VAE makes the images
                x = self.decoder(x)
            outs.append(x.float().cpu())
            if tr is not None:
                traces.append(tr)
        images = torch.cat(outs)
        wall = time.perf_counter() - t0
        return SampleResult(images=to_uint8(images) if output == "uint8" else images,
                            labels=None if labels is None else labels.cpu(), strategy=strategy, steps=steps,
                            sampler=sampler, guidance=guidance, seed=seed, wall_s=wall,
                            gflops_per_image=self.gflops_per_image(strategy, steps=steps, sampler=sampler,
                                                                   guidance=guidance,
                                                                   conditional=labels is not None
                                                                   or text is not None),
                            trace=Trace.cat(traces) if traces else None, expert_rows=list(self._rows),
                            router_rows=self._router_rows)

    def _integrate(self, x: torch.Tensor, y: torch.Tensor | None, strategy: str, steps: int, sampler: str,
                   guidance: float, record: bool, progress: Callable[[int], None] | None,
                   text: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, Trace | None]:
        """Runs the sampler from ``x`` (noise at t = 1) to t = 0; returns ``(x_0, trace or None)``."""
        s = make_sampler(sampler)
        s.set_timesteps(steps)
        recorded: list[TraceStep] = []

        def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            v, step = self.velocity(x_t, t, y, guidance, strategy, text)
            if record:
                recorded.append(step)
            return v

        for i in range(s.num_steps):
            x = s.step(model_fn(x, s.t_batch(i, x)), i, x, model_fn)
            if progress is not None:
                progress(1)
        return x, (Trace.from_steps(recorded) if record else None)


# -- the pieces of one model evaluation, shared with the Serve deployments ------------
@torch.no_grad()
def route_probs(router: nn.Module | None, x_t: torch.Tensor, t: torch.Tensor,
                y: torch.Tensor | None = None) -> torch.Tensor:
    """The router's softmax ``[B, K]`` float32; all ones ``[B, 1]`` without a router (one expert).
    ``y`` reaches class-conditional routers only (``config.num_classes > 0``)."""
    if router is None:
        return torch.ones(x_t.shape[0], 1, device=x_t.device)
    if getattr(router.config, "num_classes", 0) > 0:
        return torch.softmax(router(x_t, t, y).float(), dim=-1)
    return torch.softmax(router(x_t, t).float(), dim=-1)


@torch.no_grad()
def expert_forward(model: nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None,
                   guidance: float | torch.Tensor, num_classes: int,
                   text: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """One expert's velocity; with ``y`` (or ``text``) and ``guidance != 1`` one pass of ``[cond; null]``
    rows, CFG-combined.

    ``guidance``: a float, or a ``[B]`` tensor (one scale per row, always CFG: batched serving requests).
    ``text``: ``(states [B, L, D], mask [B, L])`` for text-conditioned experts (null = all-False mask).
    """
    per_row = isinstance(guidance, torch.Tensor)
    if text is not None:
        states, mask = text
        if not per_row and guidance == 1.0:
            return model(x, t, text=states, text_mask=mask)
        v_c, v_u = model(torch.cat([x, x]), torch.cat([t, t]), text=torch.cat([states, states]),
                         text_mask=torch.cat([mask, torch.zeros_like(mask)])).chunk(2)
        g = guidance.to(v_c.dtype).view(-1, *([1] * (v_c.dim() - 1))) if per_row else guidance
        return v_u + g * (v_c - v_u)
    if y is None or (not per_row and guidance == 1.0):
        return model(x, t, y=y)
    null = torch.full_like(y, num_classes)
    v_c, v_u = model(torch.cat([x, x]), torch.cat([t, t]), y=torch.cat([y, null])).chunk(2)
    g = guidance.to(v_c.dtype).view(-1, *([1] * (v_c.dim() - 1))) if per_row else guidance
    return v_u + g * (v_c - v_u)


def group_rows(idx: torch.Tensor, num_experts: int) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(k, rows, slot)`` for every expert chosen by some row of ``idx [B, k]``, in expert order."""
    out = []
    for k in range(num_experts):
        rows, slot = (idx == k).nonzero(as_tuple=True)
        if rows.numel():
            out.append((k, rows, slot))
    return out


def combine(x_t: torch.Tensor, w: torch.Tensor, groups: list[tuple[int, torch.Tensor, torch.Tensor]],
            outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """``v = sum_k w * v_k`` from the per-group expert outputs (``group_rows`` order: deterministic)."""
    v = torch.zeros_like(x_t)
    for (_, rows, slot), vk in zip(groups, outputs):
        v.index_add_(0, rows, vk * w[rows, slot].to(vk.dtype).view(-1, *([1] * (vk.dim() - 1))))
    return v
