"""Serving benchmark, side by side in one run: in-process ``Ensemble.sample`` vs the ensemble replica
(``serve.mode: ensemble``) vs distributed mode (Router + one deployment per expert).

    .venv/bin/python bench/serve.py [--steps 25 --guidance 3 --levels 1 4 16 64 --big DiT-XS/2 \
        --out bench/results/serve.md]

Builds its own runs in a temporary store, random weights saved through the real ``save_pretrained``
(serving speed does not depend on training): the quickstart shapes (K=4 DiT-XXS/4 experts, a
class-conditional Router-XS@16, 28x28x1, 10 classes) and one bigger model (``--big``, K=4). For each
run: the in-process sampler (n=1, one caller), then each serve mode's HTTP app on 127.0.0.1 at
every concurrency level (bounded request counts and time): p50/p95 latency, images/s, errors,
and the scheduler's own counters (mean rows per expert forward, rows per tick). Every request is
n=1, top-1, CFG, class ``i % 10``. Threads: the in-process sampler and the ensemble replica get
``--threads`` torch threads (numCpus); in distributed mode the router and each expert get one
(Ray's default for an actor) and share the same cores. Prints a Markdown table and writes it
with the command, the machine and the load (``uptime``) before and after.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("ATOLL_QUIET", "1")

CLASSES = [f"class-{i}" for i in range(10)]


# -- the runs ----------------------------------------------------------------------------------
def build_run(root: str, name: str, size: str, k: int, image: int = 28) -> str:
    """``<root>/<name>/`` in the run layout: job.json, data manifest, K experts and a router; returns its URI."""
    import torch

    from atoll.models.checkpoint import save_pretrained
    from atoll.models.dit import DiTConfig
    from atoll.models.router import RouterConfig
    from atoll.spec import loads
    from atoll.store import open_store

    job = loads(textwrap.dedent(f"""
        apiVersion: atoll/v1
        kind: Job
        metadata: {{name: {name}}}
        spec:
          store: {{uri: "{root}"}}
          data: {{source: {{type: fashion-mnist}}}}
          partition: {{k: {k}}}
          experts: {{model: {size}}}
          router: {{model: Router-XS@16}}
        """))
    run = open_store(root).sub(name)
    run.put_json("job.json", {"spec": job.model_dump(mode="json", by_alias=True)})
    run.commit("data", {"count": 0, "num_classes": len(CLASSES), "class_names": CLASSES, "shards": []})
    g = torch.Generator().manual_seed(0)

    def randomised(model):  # adaLN-Zero starts at zero: give every weight a value
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
        return model.eval()

    for i in range(k):
        save_pretrained(randomised(DiTConfig(size, image, 1, num_classes=len(CLASSES)).build()), run,
                        f"experts/{i:03d}/model")
        run.commit(f"experts/{i:03d}", {"name": f"expert-{i:03d}"})
    router = RouterConfig("Router-XS@16", image, 1, num_experts=k, num_classes=len(CLASSES)).build()
    save_pretrained(randomised(router), run, "router/model")
    run.commit("router", {"name": "router"})
    return run.uri


def serve_spec(mode: str, threads: int, k: int):
    from atoll.spec.models import ServeSpec

    if mode == "ensemble":
        return ServeSpec.model_validate({"maxSteps": 200, "ensemble": {"numCpus": threads, "maxBatchSize": 64}})
    return ServeSpec.model_validate({"mode": "distributed", "maxSteps": 200, "router": {"numCpus": 1,
                                     "maxBatchSize": 64}, "experts": {"numCpus": 1}})


# -- measuring ---------------------------------------------------------------------------------
def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


def in_process(uri: str, body: dict, requests: int, threads: int) -> tuple[dict, object]:
    """The in-process sampler alone (one caller); also returns the loaded ``Ensemble`` for the paired
    concurrency-1 measurements."""
    import torch

    from atoll.sampling import Ensemble

    torch.set_num_threads(threads)
    ens = Ensemble.from_pretrained(uri)
    ens.sample(1, class_labels=0, steps=2, guidance=body["guidance"])  # warm-up
    t0 = time.perf_counter()
    lat = [local_call(ens, body, i) for i in range(requests)]
    wall = time.perf_counter() - t0
    return {"requests": requests, "errors": 0, "p50": pct(lat, 0.5), "p95": pct(lat, 0.95),
            "images_s": requests / wall, "rows_fwd": 1.0, "rows_tick": 1.0}, ens


def local_call(ens, body: dict, i: int) -> float:
    """One in-process ``Ensemble.sample`` of request ``i``'s image; its wall time."""
    t = time.perf_counter()
    ens.sample(1, class_labels=i % 10, steps=body["steps"], guidance=body["guidance"], seed=i,
               strategy=body["strategy"])
    return time.perf_counter() - t


def in_process_batched(uri: str, body: dict, n: int, threads: int, repeats: int = 3) -> dict:
    """The batching ceiling: one caller asking for ``n`` images in one ``Ensemble.sample`` call (every row
    in every forward), best of ``repeats``. Serving at concurrency ``n`` can at most reach this."""
    import torch

    from atoll.sampling import Ensemble

    torch.set_num_threads(threads)
    ens = Ensemble.from_pretrained(uri)
    ens.sample(n, class_labels=[i % 10 for i in range(n)], steps=2, guidance=body["guidance"])  # warm-up
    walls = []
    for r in range(repeats):
        t = time.perf_counter()
        ens.sample(n, class_labels=[i % 10 for i in range(n)], steps=body["steps"], guidance=body["guidance"],
                   seed=r, strategy=body["strategy"])
        walls.append(time.perf_counter() - t)
    best = min(walls)
    return {"requests": repeats, "errors": 0, "p50": pct(walls, 0.5), "p95": pct(walls, 0.95),
            "images_s": n / best, "rows_fwd": float("nan"), "rows_tick": 2.0 * n}


def replica_direct(uri: str, body: dict, levels: list[int], requests_for, threads: int, ens) -> dict[int, dict]:
    """The ensemble replica's own class driven in this process (no Ray, no Serve, no HTTP): ``c``
    concurrent ``generate`` calls on one event loop. Splits the served overhead into the scheduler's
    share (this arm vs in-process) and the share of Serve + HTTP (the ensemble arm vs this one)."""
    import asyncio

    import torch

    from atoll.serve.deployments import EnsembleReplica
    from atoll.serve.runinfo import RunSource
    from atoll.serve.scheduler import Work

    torch.set_num_threads(threads)
    rep = EnsembleReplica(RunSource(uri))
    sched = rep.scheduler

    def work(i: int) -> Work:
        return Work(n=1, label=i % 10, steps=body["steps"], guidance=body["guidance"], seed=i,
                    strategy=body["strategy"])

    async def level(c: int, requests: int) -> dict:
        lat, sem, paired = [], asyncio.Semaphore(c), []

        async def one(i: int) -> None:
            async with sem:
                if c == 1:  # paired: the library's call for the same image just before
                    paired.append(local_call(ens, body, i))
                t = time.perf_counter()
                await sched.generate(work(i))
                lat.append(time.perf_counter() - t)

        before = sched.stats()
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        wall = time.perf_counter() - t0
        after = sched.stats()
        fwd = after["expert_forwards"] - before["expert_forwards"]
        rows = sum(after["expert_rows"]) - sum(before["expert_rows"])
        ticks = after["ticks"] - before["ticks"]
        tick_rows = after["mean_rows_per_tick"] * after["ticks"] - before["mean_rows_per_tick"] * before["ticks"]
        return {"requests": requests, "errors": 0, "p50": pct(lat, 0.5), "p95": pct(lat, 0.95),
                "images_s": requests / (wall - sum(paired)), "rows_fwd": rows / max(fwd, 1),
                "rows_tick": tick_rows / max(ticks, 1), "local_p50": pct(paired, 0.5) if paired else None}

    async def main() -> dict[int, dict]:
        await sched.generate(Work(n=1, label=0, steps=3, guidance=body["guidance"]))  # warm-up
        return {c: await level(c, requests_for(c)) for c in levels}

    return asyncio.run(main())


def load(client, body: dict, concurrency: int, requests: int, budget_s: float, ens=None) -> dict:
    """``requests`` HTTP requests from ``concurrency`` threads. At concurrency 1 with ``ens``, each request
    is paired with the in-process call for the same image just before it (``local_p50``): the two
    alternate, so slow drifts of the machine hit both alike."""
    lat, errors, paired = [], [], []
    deadline = time.monotonic() + budget_s
    before = client.get("/v1/stats").json()

    def one(i: int) -> None:
        if time.monotonic() > deadline:
            return
        if ens is not None and concurrency == 1:
            paired.append(local_call(ens, body, i))
        t = time.perf_counter()
        r = client.post("/v1/generate", json={**body, "seed": i, "class": i % 10})
        lat.append(time.perf_counter() - t)
        if r.status_code != 200:
            errors.append(r.status_code)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests)))
    wall = time.perf_counter() - t0
    after = client.get("/v1/stats").json()
    fwd = after["expert_forwards"] - before["expert_forwards"]
    rows = sum(after["expert_rows"]) - sum(before["expert_rows"])
    ticks = after["ticks"] - before["ticks"]
    tick_rows = after["mean_rows_per_tick"] * after["ticks"] - before["mean_rows_per_tick"] * before["ticks"]
    return {"requests": len(lat), "errors": len(errors), "p50": pct(lat, 0.5), "p95": pct(lat, 0.95),
            "images_s": (len(lat) - len(errors)) / (wall - sum(paired)), "rows_fwd": rows / max(fwd, 1),
            "rows_tick": tick_rows / max(ticks, 1), "local_p50": pct(paired, 0.5) if paired else None}


def serve_arm(uri: str, mode: str, body: dict, levels: list[int], requests_for, budget_s: float, threads: int,
              port: int, ens=None) -> dict[int, dict]:
    import httpx

    from atoll.serve import runner
    from atoll.serve.app import build_app

    spec = serve_spec(mode, threads, 4)
    url = runner.start(build_app(uri, serve_spec=spec, environ={}), spec, 4, port=port,
                       progress=lambda line: print(f"    {mode}: {line}", flush=True))
    out = {}
    try:
        with httpx.Client(base_url=url, timeout=900) as client:
            for i in range(4):  # warm-up: the first calls allocate
                client.post("/v1/generate", json={**body, "steps": 3, "seed": i})
            for c in levels:
                out[c] = load(client, body, c, requests_for(c), budget_s, ens)
                r = out[c]
                print(f"    {mode:11s} c={c:3d}: p50 {r['p50']:.3f} s  {r['images_s']:.2f} img/s  "
                      f"rows/expert fwd {r['rows_fwd']:.1f}  errors {r['errors']}", flush=True)
    finally:
        runner.shutdown()
    return out


def measure(label: str, size: str, root: str, args, levels: list[int], port: int) -> tuple[list, dict]:
    body = {"n": 1, "steps": args.steps, "guidance": args.guidance, "strategy": "top1"}
    uri = build_run(root, label, size, 4)
    print(f"{label}: {size} x4 at 28x28, {args.steps} steps, guidance {args.guidance}", flush=True)
    local, ens = in_process(uri, body, args.local_requests, args.threads)
    print(f"    in-process  c=  1: p50 {local['p50']:.3f} s  {local['images_s']:.2f} img/s", flush=True)
    ceiling = in_process_batched(uri, body, args.ceiling_n, args.threads)
    print(f"    in-process  n={args.ceiling_n} in one call: {ceiling['images_s']:.2f} img/s", flush=True)

    def requests_for(c: int) -> int:
        return max(args.requests, 2 * c) if c > 1 else args.requests

    rows = [(label, "in-process", 1, local), (label, f"in-process, n={args.ceiling_n} in one call", 1, ceiling)]
    arms = {}
    if args.direct:
        direct_levels = [c for c in levels if c <= 16]
        arms["replica, no Ray/HTTP"] = replica_direct(uri, body, direct_levels, requests_for, args.threads, ens)
        for c, r in arms["replica, no Ray/HTTP"].items():
            print(f"    no Ray/HTTP c={c:3d}: p50 {r['p50']:.3f} s  {r['images_s']:.2f} img/s  "
                  f"rows/expert fwd {r['rows_fwd']:.1f}", flush=True)
        rows += [(label, "replica, no Ray/HTTP", c, r) for c, r in arms["replica, no Ray/HTTP"].items()]
    for mode in args.modes:
        arms[mode] = serve_arm(uri, mode, body, levels, requests_for, args.budget_s, args.threads, port, ens)
        rows += [(label, mode, c, r) for c, r in arms[mode].items()]
    return rows, {"local": local, "ceiling": (args.ceiling_n, ceiling), **arms}


def machine() -> str:
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip()
    cpu = cpu.split(":", 1)[-1].strip() or "unknown CPU"
    return f"{cpu}, {os.cpu_count()} cores, no GPU, Python {sys.version.split()[0]}"


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def summary(label: str, res: dict) -> list[str]:
    local, lines = res["local"], []
    n, ceiling = res["ceiling"]
    lines.append(f"- {label}: batching ceiling (in process, n={n} in one call, every row in every forward) = "
                 f"{ceiling['images_s'] / local['images_s']:.2f}x one image per call "
                 f"({ceiling['images_s']:.2f} vs {local['images_s']:.2f} images/s)")
    for mode in [m for m in res if m not in ("local", "ceiling")]:
        r = res[mode]
        if 1 in r:
            base = r[1].get("local_p50") or local["p50"]
            how = "paired in-process calls, alternating" if r[1].get("local_p50") else "in process"
            lines.append(f"- {label}, {mode}: overhead at concurrency 1 {100 * (r[1]['p50'] / base - 1):+.1f}% "
                         f"(p50 {r[1]['p50']:.3f} s vs {base:.3f} s, {how})")
        if 1 in r and 16 in r:
            lines.append(f"- {label}, {mode}: images/s at concurrency 16 = {r[16]['images_s'] / r[1]['images_s']:.2f}x "
                         f"concurrency 1 ({r[16]['images_s']:.2f} vs {r[1]['images_s']:.2f}); "
                         f"{r[16]['rows_fwd']:.1f} rows per expert forward")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--big", default="DiT-XS/2", help="the bigger model (K=4 at 28x28); 'none' skips it")
    ap.add_argument("--big-levels", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--modes", nargs="+", default=["ensemble", "distributed"], choices=["ensemble", "distributed"])
    ap.add_argument("--requests", type=int, default=16, help="requests per level (at least 2x the concurrency)")
    ap.add_argument("--local-requests", type=int, default=16)
    ap.add_argument("--no-direct", dest="direct", action="store_false",
                    help="skip the replica-without-Ray/HTTP arm (the scheduler alone, in this process)")
    ap.add_argument("--ceiling-n", type=int, default=16, help="images in the one-call in-process row (the ceiling)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in process and in the ensemble replica "
                    "(more than 1 on a loaded machine makes OpenMP wait on busy cores)")
    ap.add_argument("--budget-s", type=float, default=300, help="time bound per level")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve.md")
    args = ap.parse_args()

    from atoll.runtime import ensure_ray
    from atoll.serve.runner import cpus_needed

    load_before = uptime()
    ensure_ray(num_cpus=max([os.cpu_count() or 1] + [cpus_needed(serve_spec(m, args.threads, 4), 4)
                                                      for m in args.modes]))
    root = tempfile.mkdtemp(prefix="atoll-bench-serve-")
    rows, notes = [], []
    runs = [("quickstart", "DiT-XXS/4", args.levels)] + ([] if args.big == "none" else [("bigger", args.big,
                                                                                        args.big_levels)])
    for label, size, levels in runs:
        r, res = measure(label, size, root, args, levels, args.port)
        rows += r
        notes += summary(f"{label} ({size})", res)
    load_after = uptime()
    lines = ["| run | arm | concurrency | requests | errors | p50 s | p95 s | images/s | rows per expert forward | "
             "rows per tick | paired in-process p50 s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {lab} | {arm} | {c} | {r['requests']} | {r['errors']} | {r['p50']:.3f} | {r['p95']:.3f} | "
              f"{r['images_s']:.2f} | {r['rows_fwd']:.1f} | {r['rows_tick']:.1f} | "
              f"{'' if r.get('local_p50') is None else format(r['local_p50'], '.3f')} |" for lab, arm, c, r in rows]
    table = "\n".join(lines + [""] + notes)
    print(table)
    cmd = " ".join(["python", "bench/serve.py", *sys.argv[1:]])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        f"# Serving benchmark\n\nCommand: `{cmd}`\n\nMachine: {machine()}\n\nLoad before: `{load_before}`\n\n"
        f"Load after: `{load_after}`\n\nEvery request: n=1, top-1, {args.steps} Euler steps, guidance "
        f"{args.guidance} (CFG: two expert rows per image row), class i % 10. In-process and ensemble replica: "
        f"{args.threads} torch threads; distributed: router and 4 experts with one thread each on the same "
        f"cores.\n\n{table}\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
