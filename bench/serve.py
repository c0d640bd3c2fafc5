"""Serving benchmark: latency / throughput of the Serve app vs the in-process sampler, batching on vs off.

    .venv/bin/python bench/serve.py [--model DiT-S/2 --image 16 --steps 32 --out bench/results/serve.md]

Builds an untrained K=2 run (perturbed weights: the cost is the same as a trained one) in a temp
store, times ``Ensemble.sample`` in-process, then the HTTP app on 127.0.0.1 at concurrency 1, 4, 16
(bounded request counts), then again with ``max_batch_size: 1`` (batching off). Prints a Markdown
table and writes it with the command and the machine.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "serve"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def _serve_yaml(batch: int, wait: float) -> str:
    d = f"{{numCpus: 0.5, maxBatchSize: {batch}, batchWaitTimeoutS: {wait}}}"
    return f"serve:\n  maxSamples: 16\n  maxSteps: 200\n  router: {d}\n  experts: {d}\n"


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def _load(url: str, body: dict, concurrency: int, requests: int, budget_s: float) -> dict:
    import httpx

    lat: list[float] = []
    errors = 0
    deadline = time.monotonic() + budget_s

    with httpx.Client(base_url=url, timeout=300) as c:
        def one(i: int) -> None:
            nonlocal errors
            if time.monotonic() > deadline:
                return
            t0 = time.perf_counter()
            r = c.post("/v1/generate", json={**body, "seed": i})
            if r.status_code != 200:
                errors += 1
            lat.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(requests)))
        wall = time.perf_counter() - t0
    n = len(lat)
    return {"requests": n, "errors": errors, "p50": _pct(lat, 0.5), "p95": _pct(lat, 0.95),
            "images_s": n * body["n"] / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="DiT-S/2")
    ap.add_argument("--image", type=int, default=16)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--strategy", default="top1")
    ap.add_argument("--batch-wait", type=float, default=0.002, help="batchWaitTimeoutS with batching on")
    ap.add_argument("--requests", type=int, default=16, help="requests per concurrency level (x2 at 16)")
    ap.add_argument("--budget-s", type=float, default=240, help="time bound per load level")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--out", type=Path, default=Path("bench/results/serve.md"))
    args = ap.parse_args()

    from conftest import save_tiny_run

    from atoll.sampling import Ensemble
    from atoll.serve import runner
    from atoll.serve.app import build_app

    root = tempfile.mkdtemp(prefix="atoll-bench-serve-")
    body = {"n": 1, "steps": args.steps, "strategy": args.strategy, "class": 1}

    job, run = save_tiny_run(root, "bench", 2, size=args.model, image=args.image,
                             serve=_serve_yaml(8, args.batch_wait))
    import torch

    torch.set_num_threads(1)  # what a replica gets (Ray sets OMP_NUM_THREADS from numCpus 0.5 -> 1)
    ens = Ensemble.from_pretrained(run.uri)
    ens.sample(1, class_labels=1, steps=2)  # warm-up
    local = []
    for i in range(max(4, args.requests // 2)):
        t0 = time.perf_counter()
        ens.sample(1, class_labels=1, steps=args.steps, seed=i, strategy=args.strategy)
        local.append(time.perf_counter() - t0)
    local_p50 = statistics.median(local)
    del ens

    rows = []
    url = runner.start(build_app(job), job.spec.serve, 2, port=args.port)
    try:
        _load(url, {**body, "steps": 2}, 1, 2, 60)  # warm-up
        for conc in (1, 4, 16):
            rows.append(("on", conc, _load(url, body, conc, args.requests * (2 if conc == 16 else 1), args.budget_s)))
        job_off, _ = save_tiny_run(root, "bench-nobatch", 2, size=args.model, image=args.image,
                                   serve=_serve_yaml(1, 0.0))
        url = runner.start(build_app(job_off), job_off.spec.serve, 2, port=args.port)
        _load(url, {**body, "steps": 2}, 1, 2, 60)
        for conc in (1, 16):
            rows.append(("off", conc, _load(url, body, conc, args.requests * (2 if conc == 16 else 1), args.budget_s)))
    finally:
        runner.shutdown()

    on1 = next(r for b, c, r in rows if b == "on" and c == 1)
    on16 = next(r for b, c, r in rows if b == "on" and c == 16)
    off16 = next(r for b, c, r in rows if b == "off" and c == 16)
    lines = [f"Model {args.model} at {args.image}x{args.image}, K=2, strategy {args.strategy}, "
             f"{args.steps} Euler steps, n=1 per request, 1 torch thread per process; batching on: maxBatchSize 8, "
             f"batchWaitTimeoutS {args.batch_wait}.", "",
             "| batching | concurrency | requests | errors | p50 s | p95 s | images/s |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {b} | {c} | {r['requests']} | {r['errors']} | {r['p50']:.3f} | {r['p95']:.3f} | {r['images_s']:.2f} |"
              for b, c, r in rows]
    lines += ["", f"In-process `Ensemble.sample` (same work, n=1): p50 {local_p50:.3f} s "
              f"({1 / local_p50:.2f} images/s).",
              f"Serving overhead at concurrency 1: {100 * (on1['p50'] / local_p50 - 1):+.1f}% (p50 vs p50).",
              f"Batching gain at concurrency 16: {on16['images_s'] / max(off16['images_s'], 1e-9):.2f}x images/s "
              f"(on {on16['images_s']:.2f} vs off {off16['images_s']:.2f})."]
    table = "\n".join(lines)
    print(table)
    cmd = " ".join([".venv/bin/python", "bench/serve.py", *sys.argv[1:]])
    uname = os.uname()
    machine = f"{uname.sysname} {uname.machine}, {os.cpu_count()} CPU cores, no GPU, Python {sys.version.split()[0]}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"# Serving benchmark\n\nCommand: `{cmd}`\n\nMachine: {machine} (shared with other "
                        f"work while measured)\n\n{table}\n")


if __name__ == "__main__":
    main()
