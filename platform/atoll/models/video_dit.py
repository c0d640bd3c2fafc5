"""A video diffusion transformer (VDiT): full 3D attention over spatio-temporal patches.

Same recipe as the image DiT (``dit.py``: adaLN-Zero blocks, timestep embedder,
final layer, rectified-flow velocity output), over video:

* patch embedding: ``[B, C, T, H, W]`` is cut into ``pt x p x p`` patches
  (``pt`` = ``temporal_patch``, ``p`` = the size's spatial patch) and each
  flattened patch goes through one linear layer (equal to a strided Conv3d).
  Tokens are ordered time-major: ``(t, h, w)``, ``S = T/pt * H/p * W/p``;
* positional encoding: a fixed factorised 3D sine-cosine embedding (channels
  split between t, h and w), added to the tokens;
* full 3D self-attention over all ``S`` tokens in every block;
* class conditioning with a null class (``num_classes`` = null) for CFG.

Every op except attention is per token, so the forward runs on any contiguous
slice of the token sequence. The token layout is pluggable: ``forward(...,
seq=...)`` takes an object with

* ``shard(a [B, S, ...]) -> [B, s_local, ...]``: this rank's (padded) slice,
* ``attention(S) -> core``: ``core(q, k, v) -> out``, all ``[B, s_local, heads, head_dim]``,
* ``gather(a [B, s_local, ...], S) -> [B, S, ...]``: all tokens, padding dropped.

``LocalSequence`` (the default) keeps every token here and runs plain SDPA;
``atoll.parallel.ulysses.UlyssesSequence`` splits the tokens over N ranks (Ulysses) and
``atoll.parallel.usp.USPSequence`` over N ranks with Ulysses, ring or hybrid attention. Every
layout is differentiable, so a sequence-parallel *training* step is the same forward + backward.
``model.sequence_layout = layout`` makes a layout the default of ``forward`` (how a training
engine, which calls ``model(x, t, y)``, runs it sequence-parallel); it is not part of the weights.

Shapes: ``x [B, C, T, H, W]``, ``t [B]`` in [0, 1], ``y [B]`` long -> velocity ``[B, C, T, H, W]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from atoll.models.dit import DiTBlock, FinalLayer, TimestepEmbedder, init_dit_weights, modulate
from atoll.models.config import DictConfig

# The one place video model sizes live (names mirrored in names.VIDEO_DIT_SIZE_NAMES).
# Head counts are chosen so that sequence-parallel degrees 2 and 4 divide them.
# ``temporal_patch`` (optional, default 1) is the size's frames per patch.
VDIT_SIZES: dict[str, dict] = {
    "VDiT-XXS/4": dict(depth=4, hidden_size=128, patch_size=4, num_heads=4, temporal_patch=2),
    "VDiT-XS/2": dict(depth=6, hidden_size=256, patch_size=2, num_heads=8),
    "VDiT-S/2": dict(depth=12, hidden_size=384, patch_size=2, num_heads=8),
    "VDiT-B/2": dict(depth=12, hidden_size=768, patch_size=2, num_heads=12),
}


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class VideoDiTConfig(DictConfig):
    """Everything needed to rebuild a VideoDiT. ``size`` names an entry of ``VDIT_SIZES``."""

    size: str
    input_size: int  # frame height = width
    frames: int
    in_channels: int
    num_classes: int = 0  # 0 = no class conditioning
    temporal_patch: int = 1
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        if self.size not in VDIT_SIZES:
            raise ValueError(f"VideoDiTConfig.size {self.size!r} is unknown; use one of {', '.join(VDIT_SIZES)}")
        p = VDIT_SIZES[self.size]["patch_size"]
        if self.input_size < p or self.input_size % p:
            raise ValueError(f"VideoDiTConfig.input_size {self.input_size} must be a multiple of the "
                             f"spatial patch size {p} of {self.size}")
        if self.temporal_patch < 1 or self.frames < self.temporal_patch or self.frames % self.temporal_patch:
            raise ValueError(f"VideoDiTConfig.frames {self.frames} must be a multiple of temporal_patch "
                             f"{self.temporal_patch} (>= 1)")
        if self.in_channels < 1:
            raise ValueError(f"VideoDiTConfig.in_channels must be >= 1, got {self.in_channels}")
        if self.num_classes < 0:
            raise ValueError(f"VideoDiTConfig.num_classes must be >= 0 (0 = unconditional), got {self.num_classes}")

    @property
    def dims(self) -> dict:
        """The size entry: depth, hidden_size, patch_size, num_heads."""
        return VDIT_SIZES[self.size]

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid ``(T/pt, H/p, W/p)``."""
        p = self.dims["patch_size"]
        return self.frames // self.temporal_patch, self.input_size // p, self.input_size // p

    @property
    def num_tokens(self) -> int:
        gt, gh, gw = self.grid
        return gt * gh * gw

    def build(self) -> "VideoDiT":
        return VideoDiT(self)


# --------------------------------------------------------------------------- positions
def _sincos_1d(pos: torch.Tensor, dim: int) -> torch.Tensor:
    """``pos [N]`` -> ``[N, dim]`` (``dim`` even): sin and cos of ``pos * omega``."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = pos.reshape(-1, 1).double() * omega.reshape(1, -1)
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_pos_embed_3d(dim: int, grid: tuple[int, int, int]) -> torch.Tensor:
    """Factorised 3D sine-cosine embedding ``[gt*gh*gw, dim]``, tokens ordered ``(t, h, w)``.

    Channels: about a quarter for time, the rest split evenly between rows and columns.
    """
    if dim % 4:
        raise ValueError(f"hidden_size {dim} must be divisible by 4 for the 3D sincos embedding")
    dt = 2 * round(dim / 8)
    dh = 2 * ((dim - dt) // 4)
    dw = dim - dt - dh
    gt, gh, gw = grid
    tt, hh, ww = torch.meshgrid(torch.arange(gt), torch.arange(gh), torch.arange(gw), indexing="ij")
    emb = torch.cat([_sincos_1d(tt, dt), _sincos_1d(hh, dh), _sincos_1d(ww, dw)], dim=1)
    return emb.float()


# --------------------------------------------------------------------------- attention
def sdpa_bshd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention on ``[B, S, heads, head_dim]`` tensors; ``key_mask [S]`` bool (True = a real key)."""
    mask = None if key_mask is None else key_mask.view(1, 1, 1, -1)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)


class LocalSequence:
    """Every token on this process; attention is plain SDPA. Stateless."""

    def shard(self, a: torch.Tensor) -> torch.Tensor:
        return a

    def attention(self, num_tokens: int):
        return sdpa_bshd

    def gather(self, a: torch.Tensor, num_tokens: int) -> torch.Tensor:
        return a


class SelfAttention(nn.Module):
    """Self-attention with a pluggable core. ``x [B, s, D]`` -> ``[B, s, D]``.

    Parameter names (``qkv``, ``proj``) match ``dit.Attention``.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden_size {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, core=sdpa_bshd) -> torch.Tensor:
        B, s, D = x.shape
        q, k, v = self.qkv(x).view(B, s, 3, self.num_heads, D // self.num_heads).unbind(2)
        out = core(q.contiguous(), k.contiguous(), v.contiguous())  # [B, s, heads, head_dim]
        return self.proj(out.reshape(B, s, D))


class VideoDiTBlock(DiTBlock):
    """``dit.DiTBlock`` (adaLN-Zero, no cross-attention) whose attention takes a core: ``x [B, s, D]``, ``c [B, D]``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__(dim, num_heads, mlp_ratio, cross=False)
        self.attn = SelfAttention(dim, num_heads)

    def forward(self, x: torch.Tensor, c: torch.Tensor, core=sdpa_bshd) -> torch.Tensor:  # type: ignore[override]
        sh1, sc1, g1, sh2, sc2, g2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + g1.unsqueeze(1) * self.attn(modulate(self.norm1(x), sh1, sc1), core)
        return x + g2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), sh2, sc2))


# --------------------------------------------------------------------------- model
class VideoDiT(nn.Module):
    """The video velocity model. See the module docstring."""

    def __init__(self, config: VideoDiTConfig):
        super().__init__()
        self.config = config
        d = config.dims
        D, p, pt, C = d["hidden_size"], d["patch_size"], config.temporal_patch, config.in_channels
        self.patch_dim = pt * p * p * C
        self.x_embedder = nn.Linear(self.patch_dim, D)  # == Conv3d(kernel=stride=(pt, p, p))
        self.t_embedder = TimestepEmbedder(D)
        self.register_buffer("pos_embed", sincos_pos_embed_3d(D, config.grid)[None], persistent=False)
        self.y_embedder = nn.Embedding(config.num_classes + 1, D) if config.num_classes > 0 else None
        self.blocks = nn.ModuleList(VideoDiTBlock(D, d["num_heads"], config.mlp_ratio) for _ in range(d["depth"]))
        # FinalLayer emits p*p*C' per token; C' = pt*C makes it one whole (pt, p, p, C) patch
        self.final_layer = FinalLayer(D, p, pt * C)
        self.sequence_layout = None  # the default token layout of forward (None: LocalSequence)
        self._init_weights()

    def _init_weights(self) -> None:
        init_dit_weights(self)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.weight, std=0.02)
        for blk in self.blocks:  # adaLN-Zero
            nn.init.zeros_(blk.adaLN_modulation[-1].weight)
            nn.init.zeros_(blk.adaLN_modulation[-1].bias)
        for lin in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    # -- tokens ----------------------------------------------------------------
    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, T, H, W] -> [B, S, pt*p*p*C]`` (tokens ordered t, h, w)."""
        B, C = x.shape[:2]
        gt, gh, gw = self.config.grid
        pt, p = self.config.temporal_patch, self.config.dims["patch_size"]
        x = x.reshape(B, C, gt, pt, gh, p, gw, p).permute(0, 2, 4, 6, 3, 5, 7, 1)
        return x.reshape(B, gt * gh * gw, self.patch_dim)

    def unpatchify(self, tok: torch.Tensor) -> torch.Tensor:
        """``[B, S, pt*p*p*C] -> [B, C, T, H, W]`` (inverse of ``patchify``)."""
        B, C = tok.shape[0], self.config.in_channels
        gt, gh, gw = self.config.grid
        pt, p = self.config.temporal_patch, self.config.dims["patch_size"]
        x = tok.reshape(B, gt, gh, gw, pt, p, p, C).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(B, C, gt * pt, gh * p, gw * p)

    def _cond(self, t: torch.Tensor, y: torch.Tensor | None, B: int, device: torch.device) -> torch.Tensor:
        if t.dim() == 0:
            t = t.expand(B)
        if t.shape != (B,):
            raise ValueError(f"t must have shape [{B}] (one time per clip), got {list(t.shape)}")
        c = self.t_embedder(t)
        if self.y_embedder is None:
            if y is not None:
                raise ValueError("this VideoDiT has num_classes=0 (no class conditioning); pass y=None")
            return c
        if y is None:
            y = torch.full((B,), self.config.num_classes, dtype=torch.long, device=device)
        if y.shape != (B,):
            raise ValueError(f"y must have shape [{B}] (one label per clip), got {list(y.shape)}")
        return c + self.y_embedder(y)

    # -- forward ---------------------------------------------------------------
    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, *, seq=None) -> torch.Tensor:
        """``x [B, C, T, H, W]``, ``t [B]`` -> velocity ``[B, C, T, H, W]``; ``seq``: token layout (see module doc)."""
        cfg = self.config
        want = (cfg.in_channels, cfg.frames, cfg.input_size, cfg.input_size)
        if x.dim() != 5 or tuple(x.shape[1:]) != want:
            raise ValueError(f"x must have shape [B, {', '.join(map(str, want))}] (B, C, T, H, W), got {list(x.shape)}")
        seq = seq if seq is not None else self.sequence_layout or LocalSequence()
        B, S = x.shape[0], cfg.num_tokens
        c = self._cond(t, y, B, x.device)
        h = self.x_embedder(seq.shard(self.patchify(x))) + seq.shard(self.pos_embed.to(x.dtype))
        core = seq.attention(S)
        for blk in self.blocks:
            h = blk(h, c, core)
        return self.unpatchify(seq.gather(self.final_layer(h, c), S))

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                         guidance: float = 1.0, *, seq=None) -> torch.Tensor:
        """Classifier-free guidance in one batched pass: ``v_u + guidance * (v_c - v_u)``."""
        if guidance == 1.0 or self.y_embedder is None:
            return self.forward(x, t, y, seq=seq)
        B = x.shape[0]
        t = t.expand(B) if t.dim() == 0 else t
        null = torch.full((B,), self.config.num_classes, dtype=torch.long, device=x.device)
        v = self.forward(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y if y is not None else null, null]),
                         seq=seq)
        v_c, v_u = v.chunk(2)
        return v_u + guidance * (v_c - v_u)
