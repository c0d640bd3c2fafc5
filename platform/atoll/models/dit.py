"""A diffusion transformer (DiT) that predicts a rectified-flow velocity.

After facebookresearch/DiT (Peebles & Xie, 2023): patchify -> transformer blocks
with adaLN-Zero conditioning -> linear decoder -> unpatchify. Differences:

* the output is a velocity ``v = eps - x0`` of the same shape as the input (no
  learned sigma), and time is ``t in [0, 1]`` (embedded as ``t * 1000``);
* optional text conditioning: ``pooled`` (masked mean of token states -> MLP,
  added to the conditioning vector) or ``cross`` (a cross-attention layer in
  every block, keys = a learned null token + the projected text tokens);
* image sizes need only be divisible by the patch size (28x28 works).

Null conditioning (for classifier-free guidance): class ``num_classes`` is the
null class (``y=None`` means all null); a text row whose mask is all False, or
``text=None``, uses a learned null text embedding.

Shapes: ``x [B, C, H, W]``, ``t [B]``, ``y [B]`` long, ``text [B, L, D]``,
``text_mask [B, L]`` bool (True = real token) -> velocity ``[B, C, H, W]``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from atoll.models.config import DictConfig

# The one place model sizes live; experts/*.yaml recipes name a size only.
DIT_SIZES: dict[str, dict] = {
    "DiT-XXS/2": dict(depth=4, hidden_size=128, patch_size=2, num_heads=4),
    "DiT-XXS/4": dict(depth=4, hidden_size=128, patch_size=4, num_heads=4),
    "DiT-XS/2": dict(depth=6, hidden_size=192, patch_size=2, num_heads=6),
    "DiT-XS/4": dict(depth=6, hidden_size=192, patch_size=4, num_heads=6),
    "DiT-S/2": dict(depth=12, hidden_size=384, patch_size=2, num_heads=6),
    "DiT-S/4": dict(depth=12, hidden_size=384, patch_size=4, num_heads=6),
    "DiT-B/2": dict(depth=12, hidden_size=768, patch_size=2, num_heads=12),
    "DiT-B/4": dict(depth=12, hidden_size=768, patch_size=4, num_heads=12),
    "DiT-L/2": dict(depth=24, hidden_size=1024, patch_size=2, num_heads=16),
    "DiT-XL/2": dict(depth=28, hidden_size=1152, patch_size=2, num_heads=16),
}
TEXT_MODES = ("pooled", "cross")


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class DiTConfig(DictConfig):
    """Everything needed to rebuild a DiT. ``size`` names an entry of ``DIT_SIZES``."""

    size: str
    input_size: int
    in_channels: int
    num_classes: int = 0  # 0 = no class conditioning
    text_dim: int | None = None  # e.g. 384 for all-MiniLM-L6-v2; None = no text
    text_mode: str = "pooled"  # "pooled" | "cross"
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        if self.size not in DIT_SIZES:
            raise ValueError(f"DiTConfig.size {self.size!r} is unknown; use one of {', '.join(DIT_SIZES)}")
        p = DIT_SIZES[self.size]["patch_size"]
        if self.input_size < p or self.input_size % p:
            raise ValueError(f"DiTConfig.input_size {self.input_size} must be a multiple of the patch size {p} "
                             f"of {self.size}; resize the images or pick a /{_divisor_hint(self.input_size)} size")
        if self.in_channels < 1:
            raise ValueError(f"DiTConfig.in_channels must be >= 1, got {self.in_channels}")
        if self.num_classes < 0:
            raise ValueError(f"DiTConfig.num_classes must be >= 0 (0 = unconditional), got {self.num_classes}")
        if self.text_dim is not None and self.text_dim < 1:
            raise ValueError(f"DiTConfig.text_dim must be None or >= 1, got {self.text_dim}")
        if self.text_mode not in TEXT_MODES:
            raise ValueError(f"DiTConfig.text_mode {self.text_mode!r} is unknown; use one of {TEXT_MODES}")

    @property
    def dims(self) -> dict:
        """The size entry: depth, hidden_size, patch_size, num_heads."""
        return DIT_SIZES[self.size]

    def build(self) -> "DiT":
        return DiT(self)


def _divisor_hint(n: int) -> str:
    return "|".join(str(p) for p in (2, 4, 8) if n % p == 0) or "?"


# --------------------------------------------------------------------------- helpers
def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation: ``x [B, N, D]``, ``shift/scale [B, D]``."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def sincos_pos_embed_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2D sine-cosine positional embedding ``[grid*grid, dim]`` (as in MAE / DiT)."""
    if dim % 4:
        raise ValueError(f"hidden_size {dim} must be divisible by 4 for the 2D sincos embedding")
    coords = torch.arange(grid, dtype=torch.float64)
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4.0))

    def emb_1d(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1, 1) * omega.reshape(1, -1)
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([emb_1d(gx), emb_1d(gy)], dim=1).float()


class PatchEmbed(nn.Module):
    """``[B, C, H, W] -> [B, (H/p)*(W/p), D]`` by a strided convolution."""

    def __init__(self, in_channels: int, hidden_size: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    """``t [B]`` in [0, 1] -> ``[B, D]``: sinusoidal features of ``t * 1000`` then an MLP."""

    def __init__(self, hidden_size: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    @staticmethod
    def features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = (t.float() * 1000.0)[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        f = self.features(t, self.freq_dim).to(self.mlp[0].weight.dtype)
        return self.mlp(f)


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``. ``[B, N, D] -> [B, N, D]``."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden_size {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class CrossAttention(nn.Module):
    """Queries from ``x [B, N, D]``, keys/values from ``ctx [B, L, D]``; ``mask [B, L]`` True = attend."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        L, H = ctx.shape[1], self.num_heads
        q = self.q(x).view(B, N, H, D // H).transpose(1, 2)
        k, v = self.kv(ctx).view(B, L, 2, H, D // H).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block; ``x [B, N, D]``, ``c [B, D]``; optional cross-attention to ``ctx``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, cross: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.cross = CrossAttention(dim, num_heads) if cross else None
        self.norm_cross = nn.LayerNorm(dim, eps=1e-6) if cross else None
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor, ctx: torch.Tensor | None = None,
                ctx_mask: torch.Tensor | None = None) -> torch.Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + g1.unsqueeze(1) * self.attn(modulate(self.norm1(x), sh1, sc1))
        if self.cross is not None:
            x = x + self.cross(self.norm_cross(x), ctx, ctx_mask)
        return x + g2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), sh2, sc2))


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm + linear: ``[B, N, D] -> [B, N, p*p*C]``."""

    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


def init_dit_weights(module: nn.Module) -> None:
    """DiT's init: xavier-uniform linears, patch conv like a linear. Zero-init is done by the caller."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, PatchEmbed):
            w = m.proj.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
            nn.init.zeros_(m.proj.bias)
        elif isinstance(m, TimestepEmbedder):
            for lin in (m.mlp[0], m.mlp[2]):
                nn.init.normal_(lin.weight, std=0.02)


# --------------------------------------------------------------------------- model
class DiT(nn.Module):
    """The DiT velocity model. See the module docstring for the conditioning contract."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        d = config.dims
        D, p = d["hidden_size"], d["patch_size"]
        self.patch_size, self.grid = p, config.input_size // p
        self.x_embedder = PatchEmbed(config.in_channels, D, p)
        self.t_embedder = TimestepEmbedder(D)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(D, self.grid)[None], persistent=False)
        # class table: index num_classes is the null class
        self.y_embedder = nn.Embedding(config.num_classes + 1, D) if config.num_classes > 0 else None
        cross = config.text_dim is not None and config.text_mode == "cross"
        if config.text_dim is not None:
            self.text_proj = nn.Sequential(nn.Linear(config.text_dim, D), nn.SiLU(), nn.Linear(D, D))
            # pooled: the null text vector [1, D]; cross: an always-present key token [1, 1, D]
            self.null_text = nn.Parameter(torch.zeros((1, 1, D) if cross else (1, D)))
        else:
            self.text_proj, self.null_text = None, None
        self.blocks = nn.ModuleList(DiTBlock(D, d["num_heads"], config.mlp_ratio, cross) for _ in range(d["depth"]))
        self.final_layer = FinalLayer(D, p, config.in_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        init_dit_weights(self)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.weight, std=0.02)
        if self.null_text is not None:
            nn.init.normal_(self.null_text, std=0.02)
        for blk in self.blocks:  # adaLN-Zero: every block starts as the identity
            nn.init.zeros_(blk.adaLN_modulation[-1].weight)
            nn.init.zeros_(blk.adaLN_modulation[-1].bias)
            if blk.cross is not None:
                nn.init.zeros_(blk.cross.proj.weight)
                nn.init.zeros_(blk.cross.proj.bias)
        for lin in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    # -- conditioning --------------------------------------------------------
    def _class_embed(self, y: torch.Tensor | None, B: int, device: torch.device) -> torch.Tensor | None:
        if self.y_embedder is None:
            if y is not None:
                raise ValueError("this DiT has num_classes=0 (no class conditioning); pass y=None")
            return None
        if y is None:
            y = torch.full((B,), self.config.num_classes, dtype=torch.long, device=device)
        if y.shape != (B,):
            raise ValueError(f"y must have shape [{B}] (one label per image), got {list(y.shape)}")
        return self.y_embedder(y)

    def _text(self, text: torch.Tensor | None, text_mask: torch.Tensor | None, B: int, dtype: torch.dtype):
        """Returns (vector added to c or None, cross-attention context or None, its mask or None)."""
        if self.text_proj is None:
            if text is not None:
                raise ValueError("this DiT has text_dim=None (no text conditioning); pass text=None")
            return None, None, None
        device = self.null_text.device
        if text is None:
            text = torch.zeros(B, 0, self.config.text_dim, device=device, dtype=dtype)
        if text.dim() != 3 or text.shape[0] != B or text.shape[2] != self.config.text_dim:
            raise ValueError(f"text must have shape [{B}, L, {self.config.text_dim}], got {list(text.shape)}")
        if text_mask is None:
            text_mask = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
        if text_mask.shape != text.shape[:2]:
            raise ValueError(f"text_mask must have shape {list(text.shape[:2])}, got {list(text_mask.shape)}")
        text_mask = text_mask.bool()
        if self.config.text_mode == "pooled":
            m = text_mask.unsqueeze(-1).to(text.dtype)
            n = m.sum(1)
            pooled = (text * m).sum(1) / n.clamp(min=1)
            vec = self.text_proj(pooled.to(self.null_text.dtype))
            vec = torch.where(n > 0, vec, self.null_text.to(vec.dtype).expand_as(vec))
            return vec, None, None
        ctx = self.text_proj(text.to(self.null_text.dtype))
        ctx = torch.cat([self.null_text.expand(B, 1, -1).to(ctx.dtype), ctx], dim=1)
        mask = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=text_mask.device), text_mask], dim=1)
        return None, ctx, mask

    # -- forward ---------------------------------------------------------------
    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, p*p*C] -> [B, C, H, W]``."""
        B, g, p, C = x.shape[0], self.grid, self.patch_size, self.config.in_channels
        x = x.reshape(B, g, g, p, p, C)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(B, C, g * p, g * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                text: torch.Tensor | None = None, text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, C, H, W]``, ``t [B]`` in [0, 1] -> velocity ``[B, C, H, W]``."""
        cfg = self.config
        if x.dim() != 4 or x.shape[1:] != (cfg.in_channels, cfg.input_size, cfg.input_size):
            raise ValueError(f"x must have shape [B, {cfg.in_channels}, {cfg.input_size}, {cfg.input_size}], "
                             f"got {list(x.shape)}")
        B = x.shape[0]
        if t.dim() == 0:
            t = t.expand(B)
        if t.shape != (B,):
            raise ValueError(f"t must have shape [{B}] (one time per image), got {list(t.shape)}")
        h = self.x_embedder(x) + self.pos_embed.to(x.dtype)
        c = self.t_embedder(t)
        yc = self._class_embed(y, B, x.device)
        if yc is not None:
            c = c + yc
        tvec, ctx, ctx_mask = self._text(text, text_mask, B, x.dtype)
        if tvec is not None:
            c = c + tvec
        for blk in self.blocks:
            h = blk(h, c, ctx, ctx_mask)
        return self.unpatchify(self.final_layer(h, c))

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                         guidance: float = 1.0, text: torch.Tensor | None = None,
                         text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Classifier-free guidance in one batched pass: ``v_u + guidance * (v_c - v_u)``.

        The unconditional half uses the null class and the null text. ``guidance=1``
        (or a model with no conditioning) is a plain forward.
        """
        conditional = self.y_embedder is not None or self.text_proj is not None
        if guidance == 1.0 or not conditional:
            return self.forward(x, t, y, text, text_mask)
        B = x.shape[0]
        t = t.expand(B) if t.dim() == 0 else t
        y2 = None
        if self.y_embedder is not None:
            null = torch.full((B,), self.config.num_classes, dtype=torch.long, device=x.device)
            y2 = torch.cat([y if y is not None else null, null])
        text2 = mask2 = None
        if self.text_proj is not None and text is not None:
            m = text_mask if text_mask is not None else torch.ones(text.shape[:2], dtype=torch.bool, device=x.device)
            text2, mask2 = torch.cat([text, text]), torch.cat([m.bool(), torch.zeros_like(m, dtype=torch.bool)])
        v = self.forward(torch.cat([x, x]), torch.cat([t, t]), y2, text2, mask2)
        v_c, v_u = v.chunk(2)
        return v_u + guidance * (v_c - v_u)
