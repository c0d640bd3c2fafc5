"""Data at scale: partition time and driver memory, expert and router training throughput and
per-worker memory, for synthetic WebDataset shards of growing size N.

    python bench/data_scale.py [--sizes 70000 350000 1000000] [--rgb auto] [--steps 200] \
        [--disk-gb 15] [--root /tmp/atoll-data-scale] [--out bench/results/data_scale.md]

For each N (28 px grey; then 64 px RGB at the largest N of ``--sizes`` whose data, partition
and its scratch fit ``--disk-gb``, or ``--rgb N``): writes a committed ``data`` artifact of N
synthetic samples (10 classes: a seeded smooth template per class, shifted and noised per
sample; Ray tasks per shard), then, each in a fresh process with its own local Ray:

* the partition stage (PCA 64 -> k-means 1024 fine -> K=4): wall time (without starting Ray)
  and the driver's peak RSS (and its growth during the stage, sampled every 10 ms);
* expert 0 trained for ``--steps`` steps through the real island path (Ray Train + DeepSpeed,
  one worker, 2 torch threads), streamed and in memory (``data.loader.mode``):
  samples/s (the island's mean over its logged intervals) and the worker's peak RSS;
* the router (all partitions) the same way, streamed (and in memory at the first N).

Prints a table and the ratios peak-RSS(largest N) / peak-RSS(smallest N) per process, then
deletes the data of each N before the next. Run under ``flock /tmp/atoll-bench.lock``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))
# Ray workers and the measuring subprocesses import this checkout's atoll, not another install's
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "platform")] + [p for p in [os.environ.get("PYTHONPATH")] if p])
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("ATOLL_QUIET", "1")
SHARD = 10000  # samples per shard (--shard-size)


# ---------------------------------------------------------------------------- synthetic data
def synth_shard(ref, index: int, start: int, stop: int, px: int, channels: int) -> dict:
    """Ray task: samples ``start..stop-1`` -> shard ``index`` of ``data``."""
    import numpy as np

    from atoll.data.shards import write_samples_shard

    def templates():
        rng = np.random.default_rng(1234)
        low = rng.random((10, 7, 7, channels))
        from PIL import Image

        return [np.asarray(Image.fromarray((t * 255).astype(np.uint8).squeeze()).resize((px, px))).reshape(
            px, px, channels).astype(np.float32) for t in low]

    tpl = templates()

    def samples():
        for i in range(start, stop):
            rng = np.random.default_rng([7, i])
            c = int(rng.integers(10))
            img = np.roll(tpl[c], tuple(rng.integers(-px // 8, px // 8 + 1, 2)), axis=(0, 1))
            img = np.clip(img * rng.uniform(0.7, 1.1) + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
            yield {"key": f"syn-{i:08d}", "image": img, "label": c, "caption": None}

    return write_samples_shard(ref.open(), "data", index, samples())


def make_data(run_root: str, name: str, n: int, px: int, channels: int, shard: int = SHARD) -> dict:
    from atoll.data.distributed import map_tasks
    from atoll.data.shards import commit_shards
    from atoll.data.storeref import StoreRef
    from atoll.store import open_store

    run = open_store(run_root).sub(name)
    ranges = [(i, a, min(a + shard, n)) for i, a in enumerate(range(0, n, shard))]
    shards = map_tasks(synth_shard, [(StoreRef.of(run), i, a, b, px, channels) for i, a, b in ranges],
                       desc=f"synthetic data: {n} x {px}px", samples_of=lambda e: e["count"])
    return commit_shards(run, "data", shards, kind="atoll.data", spec_hash=f"synthetic-{n}-{px}-{channels}",
                         image_shape=[channels, px, px], num_classes=10, class_names=[f"c{i}" for i in range(10)],
                         captions=0, shard_size=shard)


# ---------------------------------------------------------------------------- one measurement per process
def job_for(root: str, name: str, mode: str, steps: int, k: int, fine: int, shard: int = SHARD):
    from atoll.spec import loads

    return loads(textwrap.dedent(f"""
        apiVersion: atoll/v1
        kind: Job
        metadata: {{name: {name}}}
        spec:
          store: {{uri: "{root}"}}
          data: {{source: {{type: webdataset, urls: [synthetic]}}, shardSize: {shard}, loader: {{mode: {mode}}}}}
          partition: {{k: {k}, fineClusters: {fine}}}
          experts:
            recipe: dit-xxs4
            training: {{steps: {steps}, checkpointEvery: 100000, logEvery: {max(1, min(20, steps // 2))}}}
            scaling: {{numWorkers: 1, cpusPerWorker: 2}}
          router:
            model: Router-S
            training: {{steps: {steps}, batchSize: 128, checkpointEvery: 100000, logEvery: {max(1, min(20, steps // 2))},
                        emaDecay: 0.0}}
            scaling: {{numWorkers: 1, cpusPerWorker: 2}}
        """))


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def one(args) -> dict:
    """Runs in a child process: one partition or one training run; returns its numbers."""
    import resource

    from atoll.runtime import ensure_ray
    from atoll.store import open_store

    ensure_ray(num_cpus=os.cpu_count())
    job = job_for(args.root, args.name, args.mode, args.steps, args.k, args.fine, args.shard_size)
    run = open_store(args.root).sub(args.name)
    if args.what == "partition":
        from atoll.data.partition import run_partition

        rss0, peak, stop = _rss_mb(), [0.0], threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], _rss_mb())
                time.sleep(0.01)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        t0 = time.time()
        m = run_partition(job, run)
        wall = time.time() - t0
        stop.set()
        th.join()
        return {"wall_s": wall, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "growth_mb": max(peak[0], _rss_mb()) - rss0, "sizes": m["cluster_sizes"]}
    from atoll.islands.local import run_units
    from atoll.islands.plan import expert_units, router_unit

    unit = router_unit() if args.what == "router" else expert_units(job)[0]
    run.uncommit(unit.prefix)
    t0 = time.time()
    out = run_units(job, run, None, [unit])
    if out.failed:
        raise RuntimeError(out.failed)
    m = run.manifest(unit.prefix)
    run.uncommit(unit.prefix)
    return {"wall_s": time.time() - t0, "samples_per_s": m["samples_per_s"], "num_samples": m["num_samples"],
            "peak_rss_mb": m["data"]["process_peak_rss_mb"], "wait_s": m["data"].get("wait_s")}


def measure(what: str, mode: str, a, name: str) -> dict:
    cmd = [sys.executable, __file__, "--one", what, "--mode", mode, "--name", name, "--root", a.root,
           "--steps", str(a.steps), "--k", str(a.k), "--fine", str(a.fine), "--shard-size", str(a.shard_size)]
    for attempt in range(2):  # once more if it failed (e.g. a local Ray that timed out starting on a busy machine)
        p = subprocess.run(cmd, capture_output=True, text=True)
        if not p.returncode:
            break
        print(f"  {name} {what} {mode}: attempt {attempt + 1} failed: {p.stderr.strip().splitlines()[-1:]}", flush=True)
    if p.returncode:
        raise RuntimeError(f"{what} {mode} failed:\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    print(f"  {name} {what} {mode}: {res}", flush=True)
    return res


# ---------------------------------------------------------------------------- the table
def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    return f"{cpu}, {os.cpu_count()} cores"


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def disk_per_sample(px: int, channels: int) -> float:
    """Bytes of one sample in the data shards (measured on 200 synthetic samples)."""
    import tempfile

    from atoll.data.storeref import StoreRef
    from atoll.store import open_store

    with tempfile.TemporaryDirectory() as d:
        e = synth_shard(StoreRef.of(open_store(d).sub("x")), 0, 0, 200, px, channels)
    return e["size"] / 200


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[70000, 350000, 1000000])
    ap.add_argument("--rgb", default="auto", help="N for 64 px RGB: auto (largest that fits --disk-gb) or 0 (none)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--fine", type=int, default=1024)
    ap.add_argument("--disk-gb", type=float, default=15.0)
    ap.add_argument("--shard-size", type=int, default=SHARD)
    ap.add_argument("--modes", nargs="+", default=["stream", "memory"], help="training readers to measure")
    ap.add_argument("--units", nargs="+", default=["expert", "router"], help="what to train (the smoke test: expert)")
    ap.add_argument("--root", default="/tmp/atoll-data-scale")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "data_scale.md"))
    ap.add_argument("--one", choices=["partition", "expert", "router"], help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="stream", help=argparse.SUPPRESS)
    ap.add_argument("--name", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(argparse.Namespace(what=a.one, **vars(a)))))
        return
    from atoll.runtime import ensure_ray, shutdown_ray

    started, t_start = uptime(), time.time()
    plan = [(n, 28, 1) for n in a.sizes]
    if a.rgb != "0":
        per = disk_per_sample(64, 3)
        fits = [n for n in a.sizes if 3.2 * n * per <= a.disk_gb * 1e9]  # data + pieces + expert shards
        n_rgb = int(a.rgb) if a.rgb != "auto" else (max(fits) if fits else 0)
        print(f"64 px RGB: {per / 1024:.1f} KiB per sample -> N = {n_rgb}", flush=True)
        if n_rgb:
            plan.append((n_rgb, 64, 3))
    rows = []
    for i, (n, px, ch) in enumerate(plan):
        name = f"scale-{px}-{n}"
        ensure_ray(num_cpus=os.cpu_count())
        t0 = time.time()
        data_m = make_data(a.root, name, n, px, ch, a.shard_size)
        shutdown_ray()
        r = {"n": n, "px": px, "ch": ch, "gen_s": time.time() - t0,
             "data_gb": sum(s["size"] for s in data_m["shards"]) / 1e9}
        print(f"{name}: data {r['data_gb']:.2f} GB in {r['gen_s']:.0f} s", flush=True)
        r["partition"] = measure("partition", "stream", a, name)
        first = i == 0 or (px == 64 and plan[0][1] != 64)
        r["expert"] = {m: measure("expert", m, a, name) for m in a.modes}
        if "router" in a.units:
            r["router"] = {m: measure("router", m, a, name) for m in (a.modes if first else ["stream"])}
        rows.append(r)
        shutil.rmtree(Path(a.root) / name, ignore_errors=True)
        write(rows, a, started, uptime(), time.time() - t_start)  # after each N: a cut-short run keeps its rows


def write(rows: list[dict], a, started: str, ended: str, wall: float) -> None:
    head = ("| N | px | data GB | partition s | partition us/sample | partition driver peak RSS MB (growth) | "
            "expert stream samples/s | expert memory samples/s | stream/memory | expert worker peak RSS MB "
            "stream / memory | router stream samples/s | router worker peak RSS MB stream (memory) |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        p, e = r["partition"], r["expert"]
        ro = r.get("router") or {"stream": {"samples_per_s": float("nan"), "peak_rss_mb": float("nan")}}
        rm = f" ({ro['memory']['peak_rss_mb']:.0f})" if "memory" in ro else ""
        em = e.get("memory", {"samples_per_s": float("nan"), "peak_rss_mb": float("nan")})
        lines.append(f"| {r['n']} | {r['px']} {'grey' if r['ch'] == 1 else 'RGB'} | {r['data_gb']:.2f} | "
                     f"{p['wall_s']:.0f} | {p['wall_s'] / r['n'] * 1e6:.0f} | {p['peak_rss_mb']:.0f} "
                     f"({p['growth_mb']:.0f}) | {e['stream']['samples_per_s']:.0f} | "
                     f"{em['samples_per_s']:.0f} | {e['stream']['samples_per_s'] / em['samples_per_s']:.2f} | "
                     f"{e['stream']['peak_rss_mb']:.0f} / {em['peak_rss_mb']:.0f} | "
                     f"{ro['stream']['samples_per_s']:.0f} | {ro['stream']['peak_rss_mb']:.0f}{rm} |")
    grey = [r for r in rows if r["px"] == 28]
    ratios = []
    if len(grey) > 1:
        lo, hi = grey[0], grey[-1]

        def ratio(f):
            return f(hi) / f(lo)

        ratios = [f"peak-RSS({hi['n']}) / peak-RSS({lo['n']}), 28 px:",
                  f"- partition driver: {ratio(lambda r: r['partition']['peak_rss_mb']):.2f}",
                  f"- expert worker, streamed: {ratio(lambda r: r['expert']['stream']['peak_rss_mb']):.2f}"
                  + (f" (in memory: {ratio(lambda r: r['expert']['memory']['peak_rss_mb']):.2f})"
                     if "memory" in lo["expert"] else ""),
                  *([f"- router worker, streamed: {ratio(lambda r: r['router']['stream']['peak_rss_mb']):.2f}"]
                    if "router" in lo else []),
                  f"- partition time per sample: {ratio(lambda r: r['partition']['wall_s'] / r['n']):.2f}"]
    table = "\n".join(lines + [""] + ratios)
    print(table, flush=True)
    argv = " ".join(sys.argv[1:])
    doc = (f"# Data at scale: partition and training reads vs dataset size\n\n"
           f"Command: `flock /tmp/atoll-bench.lock python bench/data_scale.py {argv}`\n\n"
           f"Machine: {machine()}; `uptime` at start: `{started}`; at end: `{ended}`; total {wall / 60:.0f} min.\n\n"
           f"{__doc__.split(chr(10), 2)[2].split('Prints a table')[0].strip()}\n\n{table}\n")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(doc)


if __name__ == "__main__":
    main()
