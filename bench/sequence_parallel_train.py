"""The training half of ``bench/sequence_parallel.py`` (``--train``): one sequence-parallel training step.

Per (N, attention layout) a group of N processes (gloo, 127.0.0.1; N = 1: the plain step) runs,
for every clip size, ``warmup`` untimed steps and ``repeats`` timed steps of the island's computation:
forward with the rank's ``USPSequence`` (``model.sequence_layout``), the rectified-flow MSE on the
gathered output, backward, and the gradient all-reduce (sum over the sequence group, one flat
buffer, as DeepSpeed's reduction does). Per rank: the peak RSS growth during the timed steps over
the RSS before them (``_PeakRss``: activations, autograd buffers, comm buffers; parameters and
gradients already exist after the warm-up), median step time (rank 0's clock between barriers),
and the bytes sent: all-to-all (``count_all_to_all``) and ring passes (``RingComm.sent_bytes``) per
attention layer per step, against

* Ulysses, U ranks: ``8 x E x (U-1)/U`` (4 all-to-alls forward: q, k, v, out; 4 backward),
* ring, R ranks: ``(6 (R-1) + 2) x E`` (forward: k, v to the next rank R-1 times; backward: k, v,
  dk, dv R-1 times, then dk, dv home),

with ``E = b x S_pad/N x heads x head_dim`` elements (4 bytes) of this rank's q (or k, or v).
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import time


def formula_bytes(layout: str, n: int, ring: int, b: int, s_pad: int, heads: int, head_dim: int) -> float:
    """Bytes one rank sends per attention layer per training step (see the module doc)."""
    if n == 1:
        return 0.0
    e = b * s_pad / n * heads * head_dim * 4
    r = {"ulysses": 1, "ring": n, "hybrid": ring}[layout]
    u = n // r
    return 8 * e * (u - 1) / u + ((6 * (r - 1) + 2) * e if r > 1 else 0.0)


def _one(n: int, layout: str, ring: int, group, seq, size: str, frames: int, pixels: int, repeats: int,
         warmup: int) -> dict:
    import gc

    import deepspeed.comm  # noqa: F401  (imported by count_all_to_all: keep the import out of the memory window)
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from sequence_parallel import _PeakRss, _rss_mb

    from atoll.models.video_dit import VDIT_SIZES, VideoDiTConfig
    from atoll.parallel.comm_stats import count_all_to_all
    from atoll.parallel.ulysses import padded_length

    cfg = VideoDiTConfig(size, input_size=pixels, frames=frames, in_channels=1, num_classes=10,
                         temporal_patch=VDIT_SIZES[size].get("temporal_patch", 1))
    torch.manual_seed(0)
    model = cfg.build()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.sequence_layout = seq
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(1, 1, frames, pixels, pixels, generator=g)
    eps = torch.randn(x0.shape, generator=g)
    t, y = torch.full((1,), 0.5), torch.tensor([3])
    params = list(model.parameters())

    def step() -> None:
        v = model((1 - t) * x0 + t * eps, t, y)
        F.mse_loss(v, eps - x0).backward()
        if group is not None:
            flat = torch.cat([p.grad.view(-1) for p in params])
            dist.all_reduce(flat, group=group)

    for p in params:  # gradients exist before the window (as after a first step), so it sees activations
        p.grad = torch.zeros_like(p)
    for _ in range(warmup):  # thread pools, lazy buffers
        step()
    model.zero_grad(set_to_none=False)
    gc.collect()
    ring_before = seq.ring.sent_bytes if seq is not None and seq.ring is not None else 0
    rss0, sampler, times = _rss_mb(), _PeakRss(), []
    with count_all_to_all() as stats:
        for _ in range(repeats):
            if group is not None:
                dist.barrier(group)
            t0 = time.perf_counter()
            step()
            if group is not None:
                dist.barrier(group)
            times.append(time.perf_counter() - t0)
            model.zero_grad(set_to_none=False)
    peak = sampler.stop()
    ring_bytes = (seq.ring.sent_bytes - ring_before) if seq is not None and seq.ring is not None else 0
    d = cfg.dims
    s_pad = padded_length(cfg.num_tokens, n)
    per = repeats * d["depth"]
    return {"tokens": cfg.num_tokens, "s_pad": s_pad, "median_s": statistics.median(times),
            "growth_mb": peak - rss0, "sent_bytes_per_layer": (stats.sent_bytes + ring_bytes) / per,
            "formula_bytes_per_layer": formula_bytes(layout, n, ring, 1, s_pad, d["num_heads"],
                                                     d["hidden_size"] // d["num_heads"])}


def _worker(rank: int, n: int, layout: str, ring: int, port: int, size: str, clips: list, repeats: int,
            warmup: int, threads: int, out: str) -> None:
    import torch

    torch.set_num_threads(threads)
    from atoll.parallel.dims import ParallelDims
    from atoll.parallel.groups import destroy, init_process_group
    from atoll.parallel.usp import sequence_layout

    group = seq = None
    if n > 1:
        init_process_group(rank, n, port)
        group = torch.distributed.group.WORLD
        seq = sequence_layout(ParallelDims.for_layout(n, n, layout, ring if layout == "hybrid" else None), rank)
    res = []
    for frames, pixels in clips:
        res.append(_one(n, layout, ring, group, seq, size, frames, pixels, repeats, warmup))
        if rank == 0:
            print(f"  N={n} {layout} {frames}x{pixels}: {res[-1]['median_s']:.2f} s/step, "
                  f"{res[-1]['growth_mb']:.0f} MB", flush=True)
    if group is not None:
        destroy()
    with open(f"{out}.{rank}", "w") as f:
        json.dump(res, f)


def run(n: int, layout: str, ring: int, size: str, clips: list, repeats: int, warmup: int,
        threads: int) -> list[list[dict]]:
    """Per clip, the results of every rank."""
    import torch.multiprocessing as mp

    from atoll.parallel.groups import free_port

    os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "r")
        mp.spawn(_worker, args=(n, layout, ring, free_port(), size, clips, repeats, warmup, threads, out), nprocs=n,
                 join=True)
        per_rank = [json.load(open(f"{out}.{r}")) for r in range(n)]
    return [[per_rank[r][i] for r in range(n)] for i in range(len(clips))]


def table(size: str, degrees: list[int], layouts: list[str], ring: int, clips: list, repeats: int, warmup: int,
          cores: int) -> list[str]:
    """Runs every configuration and returns the markdown rows (the single-rank step is the baseline)."""
    configs = [(1, "ulysses")] + [(n, lay) for n in degrees if n > 1 for lay in layouts
                                  if lay != "hybrid" or (n > ring and n % ring == 0)]
    results = {c: run(c[0], c[1], ring, size, clips, repeats, warmup, max(1, cores // c[0])) for c in configs}
    rows = ["| tokens (padded) | N | attention | threads/rank | step (s) | per-rank peak growth (MB) | "
            "x (single-rank / N) | sent/layer/rank (KiB) | formula (KiB) |", "|" + "---|" * 9]
    for i, (frames, pixels) in enumerate(clips):
        base = max(r["growth_mb"] for r in results[(1, "ulysses")][i])
        for (n, lay) in configs:
            res = results[(n, lay)][i]
            r0, growth = res[0], max(r["growth_mb"] for r in res)
            name = lay if n > 1 else "-"
            if lay == "hybrid":
                name = f"hybrid ({n // ring}x{ring})"
            rows.append(f"| {r0['tokens']} ({r0['s_pad']}) | {n} | {name} | {max(1, cores // n)} | "
                        f"{r0['median_s']:.2f} | {growth:.0f} | {growth / (base / n):.2f} | "
                        f"{r0['sent_bytes_per_layer'] / 1024:.0f} | {r0['formula_bytes_per_layer'] / 1024:.0f} |")
    return rows
