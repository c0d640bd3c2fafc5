"""The router: a small transformer classifier ``r(x_t, t) -> logits over K experts``.

It reuses DiT's pieces (patch embedding, sincos positions, timestep embedding,
adaLN-Zero blocks): the noisy image is patchified, the blocks are conditioned
on ``t`` through adaLN, the tokens are mean-pooled, and an adaLN-modulated
LayerNorm + linear head gives the logits. Trained with cross-entropy on
(noised sample, its cluster id), its softmax estimates ``p(k | x_t, t)``.

Cheap by design: a size may name a ``resolution``: x_t is area-averaged down to that side
(``adaptive_avg_pool2d``) before the patch embedding, so the router sees a fixed number of
tokens, ``(resolution / patch)^2``, whatever the image size, while an expert's cost grows with
it. Averaging also removes noise: what decides a cluster (k-means on PCA features) is mostly
low-frequency, and that is what survives high noise levels. ``docs/routing.md`` has the
measurements behind the default (routing accuracy vs t, end quality, cost per step).

Shapes: ``x_t [B, C, H, W]``, ``t [B]`` in [0, 1] -> logits ``[B, K]``. A video ``x_t
[B, C, T, H, W]`` is routed on its frame mean (the router of a video run is trained on
noised clips, so it learns from the same averaged input).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from atoll.models.dit import DiTBlock, PatchEmbed, TimestepEmbedder, init_dit_weights, modulate, sincos_pos_embed_2d
from atoll.models.config import DictConfig

# resolution: the side x_t is area-averaged down to first (None: the full image). "@16" sizes see at
# most 16x16 pixels, i.e. a fixed token count at any image size.
ROUTER_SIZES: dict[str, dict] = {
    "Router-XS": dict(depth=2, hidden_size=64, patch_size=4, num_heads=2, resolution=None),
    "Router-S": dict(depth=3, hidden_size=128, patch_size=4, num_heads=4, resolution=None),
    "Router-B": dict(depth=4, hidden_size=256, patch_size=4, num_heads=4, resolution=None),
    "Router-XS@16": dict(depth=2, hidden_size=64, patch_size=4, num_heads=2, resolution=16),
    "Router-S@16": dict(depth=3, hidden_size=128, patch_size=4, num_heads=4, resolution=16),
}


@dataclass(frozen=True)
class RouterConfig(DictConfig):
    """Everything needed to rebuild a router. ``size`` names an entry of ``ROUTER_SIZES``."""

    size: str
    input_size: int
    in_channels: int
    num_experts: int
    mlp_ratio: float = 4.0
    num_classes: int = 0  # > 0: the router also sees the class, r(x_t, t, y) = p(k | x_t, y); null = num_classes

    def __post_init__(self) -> None:
        if self.size not in ROUTER_SIZES:
            raise ValueError(f"RouterConfig.size {self.size!r} is unknown; use one of {', '.join(ROUTER_SIZES)}")
        p = ROUTER_SIZES[self.size]["patch_size"]
        pooled = self.resolution < self.input_size
        if self.input_size < p or (not pooled and self.input_size % p):
            raise ValueError(f"RouterConfig.input_size {self.input_size} must be a multiple of the patch size {p} "
                             f"of {self.size}; resize the images or use a router size with a resolution (e.g. "
                             f"Router-XS@16)")
        if self.in_channels < 1:
            raise ValueError(f"RouterConfig.in_channels must be >= 1, got {self.in_channels}")
        if self.num_experts < 1:
            raise ValueError(f"RouterConfig.num_experts must be >= 1, got {self.num_experts}")

    @property
    def dims(self) -> dict:
        return ROUTER_SIZES[self.size]

    @property
    def resolution(self) -> int:
        """The side of the image the router's patch embedding sees: the input itself for a full-resolution
        size; else the size's ``resolution``, or the largest multiple of the patch size below the input
        when that is smaller."""
        res, p = self.dims.get("resolution"), self.dims["patch_size"]
        if res is None:
            return self.input_size
        return min(res, self.input_size // p * p)

    @property
    def num_tokens(self) -> int:
        return (self.resolution // self.dims["patch_size"]) ** 2

    def build(self) -> "Router":
        return Router(self)


class Router(nn.Module):
    """``forward(x_t, t, y=None) -> logits [B, K]``; ``probs(x_t, t, y=None)`` gives the softmax.

    A class-conditional router (``num_classes > 0``) adds a class embedding (with a null
    class, index ``num_classes``, for "no class") to the time embedding: at t -> 1 it
    learns p(k | y), so a class is routed to the experts that saw it.
    """

    def __init__(self, config: RouterConfig):
        super().__init__()
        self.config = config
        d = config.dims
        D, p = d["hidden_size"], d["patch_size"]
        self.x_embedder = PatchEmbed(config.in_channels, D, p)
        self.t_embedder = TimestepEmbedder(D)
        self.y_embedder = nn.Embedding(config.num_classes + 1, D) if config.num_classes > 0 else None
        self.register_buffer("pos_embed", sincos_pos_embed_2d(D, config.resolution // p)[None], persistent=False)
        self.blocks = nn.ModuleList(DiTBlock(D, d["num_heads"], config.mlp_ratio) for _ in range(d["depth"]))
        self.norm = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.head_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * D))
        self.head = nn.Linear(D, config.num_experts)
        init_dit_weights(self)
        for blk in self.blocks:
            nn.init.zeros_(blk.adaLN_modulation[-1].weight)
            nn.init.zeros_(blk.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.head_modulation[-1].weight)
        nn.init.zeros_(self.head_modulation[-1].bias)
        nn.init.normal_(self.head.weight, std=0.02)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        if x_t.dim() == 5:  # a video x_t [B, C, T, H, W] is routed on its frame mean
            x_t = x_t.mean(dim=2)
        if x_t.dim() != 4 or x_t.shape[1:] != (cfg.in_channels, cfg.input_size, cfg.input_size):
            raise ValueError(f"x_t must have shape [B, {cfg.in_channels}, {cfg.input_size}, {cfg.input_size}], "
                             f"got {list(x_t.shape)}")
        B = x_t.shape[0]
        if t.dim() == 0:
            t = t.expand(B)
        if t.shape != (B,):
            raise ValueError(f"t must have shape [{B}] (one time per image), got {list(t.shape)}")
        if cfg.resolution < cfg.input_size:  # area average down to the router's resolution
            x_t = F.adaptive_avg_pool2d(x_t, cfg.resolution)
        h = self.x_embedder(x_t) + self.pos_embed.to(x_t.dtype)
        c = self.t_embedder(t)
        if self.y_embedder is not None:
            if y is None:
                y = torch.full((B,), cfg.num_classes, dtype=torch.long, device=x_t.device)
            c = c + self.y_embedder(y).to(c.dtype)
        for blk in self.blocks:
            h = blk(h, c)
        shift, scale = self.head_modulation(c).chunk(2, dim=1)
        pooled = modulate(self.norm(h.mean(dim=1, keepdim=True)), shift, scale).squeeze(1)
        return self.head(pooled)

    @torch.no_grad()
    def probs(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``softmax(forward(x_t, t, y))`` in float32, ``[B, K]``."""
        return torch.softmax(self.forward(x_t, t, y).float(), dim=-1)


@torch.no_grad()
def with_heads(router: Router, rows: list[int | None], seed: int = 0) -> Router:
    """A router over other experts: output ``i`` is the old output ``rows[i]`` (the same weights, so over a
    subset its softmax is the old one renormalised), or a new head row (``None``: initialised as a fresh
    router's head, for an expert the old router never saw). Everything but the head is copied."""
    if not rows:
        raise ValueError("a router needs at least one output")
    with torch.random.fork_rng(devices=[]):  # new rows are seeded; the caller's RNG is left alone
        torch.manual_seed(seed)
        new = Router(replace(router.config, num_experts=len(rows)))
    state = {k: v for k, v in router.state_dict().items() if not k.startswith("head.")}
    new.load_state_dict(state, strict=False)
    for i, r in enumerate(rows):
        if r is not None:
            new.head.weight[i] = router.head.weight[r]
            new.head.bias[i] = router.head.bias[r]
    return new.to(router.head.weight.device).eval()
