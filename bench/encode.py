"""Encode throughput: images/s of the encode stage's VAE path (``atoll.data.vae.Vae.encode``).

Builds randomly initialised AutoencoderKLs (weights do not change the cost), saves them with
``save_pretrained`` and loads them through the real loading code, then times ``encode`` on
random uint8 images, one warm-up batch first. Configs: ``tiny`` (the tests' VAE) and ``sd``
(Stable Diffusion's VAE architecture: 128-256-512-512 channels, 8x downsampling, 4 latent
channels, 83.7 M parameters). Prints a markdown table and writes it to ``--out`` when given.

    python bench/encode.py --out bench/results/encode.md
    python bench/encode.py --configs tiny:32 --n 8            # the smoke size
"""
from __future__ import annotations

import argparse
import os
import platform as host
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

CONFIGS = {
    "tiny": dict(block_out_channels=[2, 4], down_block_types=["DownEncoderBlock2D"] * 2,
                 up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=2),
    "sd": dict(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
               up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, layers_per_block=2,
               norm_num_groups=32, scaling_factor=0.18215),
}


def _machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), host.processor())
    return f"{cpu}, {os.cpu_count()} cores"


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def measure(name: str, size: int, n: int, batch: int, threads: int, device: str, root: Path) -> dict:
    import diffusers
    import torch

    from atoll.data.vae import Vae
    from atoll.devices import for_stage

    torch.set_num_threads(threads)
    folder = root / name
    if not folder.exists():
        torch.manual_seed(0)
        diffusers.AutoencoderKL(in_channels=3, out_channels=3, **CONFIGS[name]).save_pretrained(folder)
    placement = for_stage(device)
    vae = Vae.load(str(folder), placement)
    params = sum(p.numel() for p in vae.model.encoder.parameters()) + sum(
        p.numel() for p in vae.model.quant_conv.parameters())
    images = np.random.default_rng(0).integers(0, 256, (n, 3, size, size), dtype=np.uint8)
    vae.encode(images[:batch], batch)  # warm-up
    if placement.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    z = vae.encode(images, batch)
    if placement.is_cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    return {"vae": name, "encoder params": f"{params / 1e6:.2f} M", "images": f"{size}x{size}",
            "latents": "x".join(map(str, z.shape[1:])), "n": n, "batch": batch, "threads": threads,
            "device": str(placement.device), "s": f"{wall:.2f}", "images/s": f"{n / wall:.3g}"}


def table(rows: list[dict]) -> str:
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="tiny:32:512,sd:64:16,sd:256:4",
                    help="NAME:SIZE:N,... (names: tiny, sd; N images)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", default=str(min(2, os.cpu_count() or 1)), help="torch threads, e.g. 1,2")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    ap.add_argument("--out", help="also write the table (with the machine and load) to this markdown file")
    a = ap.parse_args(argv)
    before = _uptime()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for item in a.configs.split(","):
            name, size, n = item.split(":")
            n = int(n)
            for th in (int(t) for t in a.threads.split(",")):
                rows.append(measure(name, int(size), n, min(a.batch, n), th, a.device, Path(tmp)))
                print(rows[-1], flush=True)
    load = max(float(u.split("load average:")[1].split(",")[0]) for u in (before, _uptime()) if "load average:" in u)
    note = (f"\n\nThe 1-minute load average reached {load:.1f} on {os.cpu_count()} cores: the machine was shared, "
            "so these numbers (above all the 2-thread rows) are lower bounds." if load > 3 else "")
    text = (f"# Encode throughput (atoll.data.vae.Vae.encode)\n\nMachine: {_machine()}\n\n"
            f"Load before: `{before}`\n\nLoad after: `{_uptime()}`{note}\n\n"
            f"Command: `python bench/encode.py --configs {a.configs} --threads {a.threads} --device {a.device}`\n\n"
            f"{table(rows)}\n")
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
