"""Worker run in each spawned rank by test_sequence_parallel.py (importable under spawn)."""
from __future__ import annotations

import json
import os

import torch

# (frames, input_size, temporal_patch): S = frames/pt * (input_size/2)^2
CASES = [(2, 8, 1), (3, 6, 1), (5, 4, 1), (2, 10, 1), (4, 6, 2), (1, 2, 1)]


def num_tokens(case) -> int:
    frames, size, pt = case
    return frames // pt * (size // 2) ** 2


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def worker(rank: int, world: int, port: int, out_path: str) -> None:
    os.environ["DS_ACCELERATOR"] = "cpu"
    torch.set_num_threads(1)
    from atoll.models.video_dit import VideoDiTConfig
    from atoll.parallel.comm_stats import count_all_to_all, ulysses_formula_elements
    from atoll.parallel.dims import ParallelConfigError
    from atoll.parallel.groups import destroy, init_process_group
    from atoll.parallel.ulysses import UlyssesSequence, padded_length, sequence_parallel_forward

    init_process_group(rank, world, port)
    group = torch.distributed.group.WORLD
    result: dict = {"cases": []}
    try:
        for i, case in enumerate(CASES):
            frames, size, pt = case
            cfg = VideoDiTConfig("VDiT-XS/2", input_size=size, frames=frames, in_channels=1, num_classes=4,
                                 temporal_patch=pt)
            model = randomize(cfg.build(), seed=i).eval()
            g = torch.Generator().manual_seed(100 + i)
            x = torch.randn(2, 1, frames, size, size, generator=g)
            t = torch.rand(2, generator=g)
            y = torch.tensor([1, 4])  # one real class, one null class
            guidance = 2.5 if i == 0 else 1.0
            with torch.no_grad():
                ref = model.forward_with_cfg(x, t, y, guidance)
                with count_all_to_all() as stats:
                    out = sequence_parallel_forward(model, x, t, y, group=group, guidance=guidance)
            S = cfg.num_tokens
            b = 2 * (2 if guidance != 1.0 else 1)
            d = cfg.dims
            formula = ulysses_formula_elements(b, padded_length(S, world), d["num_heads"],
                                               d["hidden_size"] // d["num_heads"], world) * d["depth"] * 4
            result["cases"].append({"tokens": S, "max_abs_err": (out - ref).abs().max().item(),
                                    "ref_scale": ref.abs().max().item(), "a2a_calls": stats.calls,
                                    "depth": d["depth"], "sent_bytes": stats.sent_bytes,
                                    "formula_bytes": formula})
        if world == 2:  # the whole sampler: same seed -> the same video as the single-rank sampler
            from atoll.sampling.video_io import sample_video

            cfg = VideoDiTConfig("VDiT-XS/2", input_size=6, frames=3, in_channels=1, num_classes=4)
            model = randomize(cfg.build(), seed=7).eval()
            kw = dict(steps=3, y=torch.tensor([0, 2]), guidance=2.0, seed=11, sampler="heun")
            ref = sample_video(model, 2, **kw)
            out = sample_video(model, 2, seq=UlyssesSequence(group, cfg.dims["num_heads"]), **kw)
            result["sampler_max_abs_err"] = (out - ref).abs().max().item()
        # N must divide the heads: clear error before any communication
        try:
            UlyssesSequence(group, num_heads=6 if world == 4 else 7)
            result["heads_error"] = None
        except ParallelConfigError as e:
            result["heads_error"] = str(e)
    finally:
        destroy()
    with open(f"{out_path}.{rank}", "w") as f:
        json.dump(result, f)


def layouts_worker(rank: int, world: int, port: int, out_path: str) -> None:
    """Ring and hybrid (and Ulysses) layouts: forward on every CASE, backward on two of them.

    Backward: a fixed weighting of the output (the same on every rank) is summed and differentiated;
    the ranks' parameter and input gradients, summed over the group (what the training reduction
    does), must equal the single-rank ones."""
    os.environ["DS_ACCELERATOR"] = "cpu"
    torch.set_num_threads(1)
    import torch.distributed as dist

    from atoll.models.video_dit import VideoDiTConfig
    from atoll.parallel.dims import ParallelDims
    from atoll.parallel import ring as ring_module
    from atoll.parallel.groups import destroy, init_process_group
    from atoll.parallel.usp import sequence_layout

    ring_module.CHUNK_ELEMENTS, ring_module.MIN_CHUNK_ROWS = 512, 1  # several query chunks per block even here
    init_process_group(rank, world, port)
    layouts = [("ring", None)] + ([("hybrid", 2), ("ulysses", None)] if world == 4 else [])
    result: dict = {}
    try:
        for attention, ring in layouts:
            seq = sequence_layout(ParallelDims.for_layout(world, world, attention, ring), rank, 8)
            rows = []
            for i, case in enumerate(CASES):
                frames, size, pt = case
                cfg = VideoDiTConfig("VDiT-XS/2", input_size=size, frames=frames, in_channels=1, num_classes=4,
                                     temporal_patch=pt)
                model = randomize(cfg.build(), seed=i)
                g = torch.Generator().manual_seed(100 + i)
                x = torch.randn(2, 1, frames, size, size, generator=g)
                t, y = torch.rand(2, generator=g), torch.tensor([1, 4])
                row = {"tokens": cfg.num_tokens}
                with torch.no_grad():
                    ref = model.forward_with_cfg(x, t, y, 2.5 if i == 0 else 1.0)
                    out = model.forward_with_cfg(x, t, y, 2.5 if i == 0 else 1.0, seq=seq)
                row.update(fwd_err=(out - ref).abs().max().item(), ref_scale=ref.abs().max().item())
                if i in (1, 4):  # 27 and 18 tokens: backward (27: padded at N = 2 and 4)
                    w = torch.randn(x.shape, generator=g)

                    def grads(layout):
                        model.zero_grad()
                        xx = x.clone().requires_grad_(True)
                        (model(xx, t, y, seq=layout) * w).sum().backward()
                        return [p.grad.clone() for p in model.parameters()] + [xx.grad]

                    want, got = grads(None), grads(seq)
                    for gr in got:
                        dist.all_reduce(gr, group=seq.group)
                    row["bwd_err"] = max((a - b).abs().max().item() for a, b in zip(got, want))
                    row["bwd_scale"] = max(b.abs().max().item() for b in want)
                rows.append(row)
            result[attention] = rows
    finally:
        destroy()
    with open(f"{out_path}.{rank}", "w") as f:
        json.dump(result, f)
