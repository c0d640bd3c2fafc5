"""Sequence-parallel VideoDiT forward (Ulysses) or training step (Ulysses / ring / hybrid): time, memory, bytes.

    .venv/bin/python bench/sequence_parallel.py --train [--size VDiT-XXS/4 --degrees 1 2 4 \
        --layouts ulysses ring hybrid --ring-degree 2 --clips 16x64 32x64 16x128 32x128 --repeats 2]

``--train``: see ``bench/sequence_parallel_train.py`` (clips FxS of VDiT-XXS/4: ``tokens = F/2 *
(S/4)^2``, 2048-16384 by default); results in ``bench/results/sequence_parallel_train.md``. Without
it, the forward (one denoising step) as below.

    .venv/bin/python bench/sequence_parallel.py [--size VDiT-XS/2 --degrees 1 2 4 \
        --clips 5x14 8x16 8x24 8x32 --repeats 3 --out bench/results/sequence_parallel.md]

``--clips FxS``: F frames of SxS pixels, 1 channel, spatial patch 2, temporal patch 1, so
``tokens = F * (S/2)^2`` (5x14 -> 245, not divisible by 2 or 4: exercises the padding).
One denoising step = one forward of batch 1, fp32, no grad. For every N a group of N
processes (gloo on 127.0.0.1; N=1 is the plain single-rank forward) runs every clip in turn:
builds the model, runs one warm-up and ``--repeats`` timed forwards (median reported, rank
0's clock between barriers). Threads per rank: ``auto`` = max(1, cores // N) (every N uses the
same cores) and/or a fixed count (``--threads auto 1``, the default, runs both).

Memory, per rank: the *peak growth* = the highest RSS seen during the forwards (a thread
samples ``/proc/self/statm`` every 1 ms) minus the RSS just before them: activations,
attention scores, comm buffers. The workers run with ``MALLOC_MMAP_THRESHOLD_=131072`` so
freed tensors go back to the OS and one clip's peak does not hide the next one's. Also the
process high-water mark ``ru_maxrss`` (includes ~0.3 GB of torch + deepspeed). The table
shows the max over ranks. Communication: ``atoll.parallel.comm_stats.count_all_to_all``
counts every ``deepspeed.comm.all_to_all_single`` call; per attention layer per rank =
total / depth, against the Ulysses formula ``4 x b*S_pad*h*d/N x (N-1)/N`` elements.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))
os.environ.setdefault("DS_ACCELERATOR", "cpu")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _PeakRss:
    """Samples the current RSS every ``interval`` s in a thread; ``.peak_mb`` after ``stop()``."""

    def __init__(self, interval: float = 0.001):
        import threading

        self.peak_mb, self._stop = _rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, _rss_mb())
            time.sleep(interval)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, _rss_mb())
        return self.peak_mb


def _one_clip(n: int, group, size: str, frames: int, pixels: int, repeats: int) -> dict:
    import gc

    import torch

    from atoll.models.video_dit import VideoDiTConfig
    from atoll.parallel.comm_stats import count_all_to_all, ulysses_formula_elements
    from atoll.parallel.ulysses import UlyssesSequence, padded_length

    cfg = VideoDiTConfig(size, input_size=pixels, frames=frames, in_channels=1, num_classes=10)
    torch.manual_seed(0)
    model = cfg.build().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    x = torch.randn(1, 1, frames, pixels, pixels)
    t, y = torch.full((1,), 0.5), torch.tensor([3])
    seq = UlyssesSequence(group, cfg.dims["num_heads"]) if n > 1 else None
    import deepspeed.comm  # noqa: F401  (imported by count_all_to_all; keep it out of the window)

    with torch.no_grad():
        model(x, t, y, seq=seq)  # warm-up (thread pools, lazy buffers): not in the memory window
    gc.collect()
    rss0 = _rss_mb()
    sampler = _PeakRss()
    times = []
    with torch.no_grad(), count_all_to_all() as stats:
        for _ in range(repeats):
            if group is not None:
                torch.distributed.barrier(group)
            t0 = time.perf_counter()
            model(x, t, y, seq=seq)
            if group is not None:
                torch.distributed.barrier(group)
            times.append(time.perf_counter() - t0)
    peak = sampler.stop()
    d = cfg.dims
    S = cfg.num_tokens
    s_pad = padded_length(S, n)
    forwards = repeats
    return {"tokens": S, "s_pad": s_pad, "median_s": statistics.median(times), "growth_mb": peak - rss0,
            "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "a2a_calls_per_layer": stats.calls / forwards / d["depth"],
            "a2a_sent_bytes_per_layer": stats.sent_bytes / forwards / d["depth"],
            "formula_bytes_per_layer": ulysses_formula_elements(1, s_pad, d["num_heads"],
                                                                d["hidden_size"] // d["num_heads"], n) * 4}


def _worker(rank: int, n: int, port: int, size: str, clips: list, repeats: int, threads: int, out: str) -> None:
    import torch

    torch.set_num_threads(threads)
    from atoll.parallel.groups import destroy, init_process_group

    group = None
    if n > 1:
        init_process_group(rank, n, port)
        group = torch.distributed.group.WORLD
    res = []
    for frames, pixels in clips:
        res.append(_one_clip(n, group, size, frames, pixels, repeats))
        if rank == 0:
            print(f"  N={n} {frames}x{pixels}: {res[-1]['median_s']:.3f} s", flush=True)
    if group is not None:
        destroy()
    with open(f"{out}.{rank}", "w") as f:
        json.dump(res, f)


def run_degree(n: int, size: str, clips: list, repeats: int, threads: int) -> list[list[dict]]:
    """Per clip, the results of every rank."""
    import torch.multiprocessing as mp

    from atoll.parallel.groups import free_port

    os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "r")
        mp.spawn(_worker, args=(n, free_port(), size, clips, repeats, threads, out), nprocs=n, join=True)
        per_rank = [json.load(open(f"{out}.{r}")) for r in range(n)]
    return [[per_rank[r][i] for r in range(n)] for i in range(len(clips))]


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    load = os.getloadavg()[0]
    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python "
            f"{platform.python_version()}, torch {torch.__version__}, gloo; load average {load:.1f} at start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="VDiT-XS/2")
    ap.add_argument("--degrees", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--clips", nargs="+", default=["5x14", "8x16", "8x24", "8x32"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", nargs="+", default=["auto", "1"],
                    help="threads per rank, one table row set per value: auto = max(1, cores // N)")
    ap.add_argument("--note", nargs="*", default=[], help="paragraphs appended to the results file")
    ap.add_argument("--out", default=None, help="default bench/results/sequence_parallel[_train].md")
    ap.add_argument("--train", action="store_true", help="a training step instead of a forward")
    ap.add_argument("--layouts", nargs="+", default=["ulysses", "ring", "hybrid"], help="--train: attention layouts")
    ap.add_argument("--ring-degree", type=int, default=2, help="--train: ring degree of the hybrid layout")
    ap.add_argument("--warmup", type=int, default=1, help="--train: untimed steps before the timed ones")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    if args.train:
        return main_train(args, cores)
    args.out = args.out or str(ROOT / "bench" / "results" / "sequence_parallel.md")
    header = ("| N | threads/rank | frames x px | tokens (padded) | latency/step (s) | per-rank peak growth (MB) | "
              "per-rank max RSS (MB) | a2a calls/layer | a2a sent/layer/rank (KiB) | Ulysses formula (KiB) |")
    rows = [header, "|" + "---|" * 10]
    clips = [tuple(int(v) for v in c.split("x")) for c in args.clips]
    for th in args.threads:
        def nthreads(n: int) -> int:
            return max(1, cores // n) if th == "auto" else int(th)

        results = {n: run_degree(n, args.size, clips, args.repeats, nthreads(n)) for n in args.degrees}
        for i, (frames, pixels) in enumerate(clips):
            for n in args.degrees:
                res = results[n][i]
                r0 = res[0]
                row = (f"| {n} | {nthreads(n)} | {frames}x{pixels} | {r0['tokens']} ({r0['s_pad']}) | "
                       f"{r0['median_s']:.3f} | {max(r['growth_mb'] for r in res):.0f} | "
                       f"{max(r['maxrss_mb'] for r in res):.0f} | {r0['a2a_calls_per_layer']:.0f} | "
                       f"{r0['a2a_sent_bytes_per_layer'] / 1024:.1f} | {r0['formula_bytes_per_layer'] / 1024:.1f} |")
                rows.append(row)
    print("\n".join(rows), flush=True)
    cmd = _command(sys.argv[1:])
    text = "\n".join([
        "# Sequence-parallel VideoDiT forward (DeepSpeed-Ulysses)", "",
        f"Command: `{cmd.strip()}`", "",
        f"Machine: {machine()}.", "",
        f"Model {args.size} (random weights), batch 1, fp32, one forward = one denoising step; "
        f"median of {args.repeats} after a warm-up; threads per rank: auto = max(1, {cores} // N), or fixed. "
        "Peak growth = highest RSS sampled (1 ms) during the forwards minus the RSS just before them "
        "(max over ranks); max RSS = ru_maxrss, includes torch + deepspeed. a2a = bytes each rank sends to the "
        "others through deepspeed.comm.all_to_all_single per attention layer (q, k, v, out), "
        "measured, vs 4 x b*S_pad*h*d/N x (N-1)/N x 4 bytes.", "",
        *rows, "", *args.note, ""])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")


def _command(argv: list[str]) -> str:
    if "--note" in argv:  # the note is printed below the table, not in the command
        i = argv.index("--note")
        j = next((k for k in range(i + 1, len(argv)) if argv[k].startswith("--")), len(argv))
        argv = argv[:i] + ['--note "<the note below the table>"'] + argv[j:]
    return ("python bench/sequence_parallel.py " + " ".join(argv)).strip()


def main_train(args, cores: int) -> None:
    import sequence_parallel_train as spt

    size = args.size if args.size != "VDiT-XS/2" else "VDiT-XXS/4"
    clips = args.clips if args.clips != ["5x14", "8x16", "8x24", "8x32"] else ["16x64", "32x64", "16x128", "32x128"]
    clips = [tuple(int(v) for v in c.split("x")) for c in clips]
    repeats = args.repeats if args.repeats != 3 else 2
    start = machine()
    rows = spt.table(size, args.degrees, args.layouts, args.ring_degree, clips, repeats, args.warmup, cores)
    print("\n".join(rows), flush=True)
    load_end = os.getloadavg()
    out = args.out or str(ROOT / "bench" / "results" / "sequence_parallel_train.md")
    text = "\n".join([
        "# Sequence-parallel VideoDiT training step (Ulysses, ring, hybrid)", "",
        f"Command: `{_command(sys.argv[1:])}`", "",
        f"Machine: {start}; load average {load_end[0]:.1f} / {load_end[1]:.1f} / {load_end[2]:.1f} (1/5/15 min) "
        "at the end.", "",
        f"Model {size} (random weights), batch 1, fp32; one step = forward with the rank's token layout, MSE on the "
        "gathered output, backward, gradient all-reduce over the group; median of "
        f"{repeats} after {args.warmup} untimed step(s); threads per rank max(1, {cores} // N). "
        "Peak growth = highest RSS sampled (1 ms) during the timed steps minus the RSS before them (max over ranks): the activations the step holds "
        "(parameters and gradients exist before). `x (single-rank / N)` = that growth over (the single-rank "
        "growth / N); target <= 1.2. Sent = bytes a rank sends per attention layer per step (all-to-all + ring), "
        "measured, vs the formulas in bench/sequence_parallel_train.py.", "",
        *rows, "", *args.note, ""])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
