"""Analytic FLOPs of one forward pass, per sample.

Counted: every matmul as ``2 * m * n * k`` — the patch-embedding convolution,
the timestep MLP, the text projection, per block the adaLN linear, QKV,
``Q K^T``, ``A V``, the output projection, the MLP and (cross mode) the
cross-attention q/kv/out and its two attention products; the final adaLN
linear and output linear (router: head modulation + head).
Not counted: layer norms, softmax, activations, modulation and residual adds,
embedding look-ups, positional-embedding adds (all O(N*D), a few % at most).
This matches what ``torch.utils.flop_counter.FlopCounterMode`` counts (with the
math SDPA backend, whose matmuls it sees). Training is ``3 *`` forward.
"""
from __future__ import annotations

from atoll.models.dit import DiTConfig
from atoll.models.router import RouterConfig

FREQ_DIM = 256  # TimestepEmbedder frequency features


def _mm(m: int, n: int, k: int) -> int:
    return 2 * m * n * k


def _block(n_tok: int, d: int, mlp_hidden: int) -> int:
    return (_mm(1, 6 * d, d)  # adaLN modulation
            + _mm(n_tok, 3 * d, d) + _mm(n_tok, n_tok, d) + _mm(n_tok, d, n_tok) + _mm(n_tok, d, d)  # attention
            + _mm(n_tok, mlp_hidden, d) + _mm(n_tok, d, mlp_hidden))  # MLP


def dit_forward_flops(config: DiTConfig, text_len: int = 32) -> int:
    """FLOPs of ``DiT.forward`` for one sample; ``text_len`` tokens of text when the config has text."""
    d, p, C = config.dims["hidden_size"], config.dims["patch_size"], config.in_channels
    n = (config.input_size // p) ** 2
    mlp = int(d * config.mlp_ratio)
    total = _mm(n, d, C * p * p) + _mm(1, d, FREQ_DIM) + _mm(1, d, d)  # patch embed, t MLP
    cross = config.text_dim is not None and config.text_mode == "cross"
    if config.text_dim is not None:
        rows = text_len if cross else 1  # cross projects every token, pooled the mean
        total += _mm(rows, d, config.text_dim) + _mm(rows, d, d)
    per_block = _block(n, d, mlp)
    if cross:
        keys = text_len + 1  # + the learned null token
        per_block += _mm(n, d, d) + _mm(keys, 2 * d, d) + _mm(n, keys, d) + _mm(n, d, keys) + _mm(n, d, d)
    total += config.dims["depth"] * per_block
    total += _mm(1, 2 * d, d) + _mm(n, p * p * C, d)  # final adaLN + linear
    return total


def video_dit_forward_flops(config) -> int:
    """FLOPs of ``VideoDiT.forward`` for one clip (``T/pt * (H/p)^2`` tokens, full 3D attention)."""
    d, p, C, pt = config.dims["hidden_size"], config.dims["patch_size"], config.in_channels, config.temporal_patch
    n = (config.frames // pt) * (config.input_size // p) ** 2
    total = _mm(n, d, C * pt * p * p) + _mm(1, d, FREQ_DIM) + _mm(1, d, d)
    total += config.dims["depth"] * _block(n, d, int(d * config.mlp_ratio))
    return total + _mm(1, 2 * d, d) + _mm(n, pt * p * p * C, d)


def router_forward_flops(config: RouterConfig) -> int:
    """FLOPs of ``Router.forward`` for one sample (on its ``resolution``: the area average down to it is
    O(pixels) adds, not counted)."""
    d, p, C = config.dims["hidden_size"], config.dims["patch_size"], config.in_channels
    n = config.num_tokens
    total = _mm(n, d, C * p * p) + _mm(1, d, FREQ_DIM) + _mm(1, d, d)
    total += config.dims["depth"] * _block(n, d, int(d * config.mlp_ratio))
    return total + _mm(1, 2 * d, d) + _mm(1, config.num_experts, d)


def forward_flops(config: DiTConfig | RouterConfig, **kw) -> int:
    if isinstance(config, DiTConfig):
        return dit_forward_flops(config, **kw)
    if isinstance(config, RouterConfig):
        return router_forward_flops(config)
    from atoll.models.video_dit import VideoDiTConfig

    if isinstance(config, VideoDiTConfig):
        return video_dit_forward_flops(config)
    raise ValueError(f"forward_flops takes a DiTConfig, VideoDiTConfig or RouterConfig, got {type(config).__name__}")


def train_flops_per_sample(config: DiTConfig | RouterConfig, **kw) -> int:
    """Forward + backward ~ 3x the forward FLOPs."""
    return 3 * forward_flops(config, **kw)
