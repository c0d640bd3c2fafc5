"""Islands vs the bare DeepSpeed step: does the local target train as fast as the cores allow?

    flock /tmp/atoll-bench.lock .venv/bin/python bench/train_throughput.py [--steps 240] [--also-cpus 0.4]

Side by side in one run, on the expert of ``--job`` (default jobs/quickstart.yaml: DiT-XXS/4, batch 64):

* **bare**: only the DeepSpeed step of that model (forward, the flow-matching loss, backward,
  optimizer step) on synthetic batches of the same shape, in C processes of one torch thread each
  (C = the machine's cores, one per core) and in one process of C threads; the better layout
  is the ceiling the islands are measured against.
* **islands**: the job's K experts trained by the local target (``atoll.islands.local.run_units``:
  Ray Train + DeepSpeed, the real loop with its data, EMA, progress and checkpoints into a file
  store), ``--steps`` steps each, scheduled as the job says (``--also-cpus X`` adds a second arm
  with ``scaling.cpusPerWorker: X``, e.g. the old 0.4).

Islands samples/s are reported two ways: *steady* (the sum of the rates of the islands training at
the same time, each rate measured by the loop between two progress reports) and *end-to-end* (all
samples / the wall time of ``run_units``, Ray Train start-up and checkpoints included).

On a machine shared with other work, wall-clock rates measure the neighbours as much as Atoll, so
the bench also reports **samples per CPU-second**: of the bare processes, of the islands' training
workers (the loop's own cost per step: data, EMA, progress, checkpoints) and of every process of
the islands' Ray instance (Ray Train's actors, start-up). Those ratios hold under load; the
wall-clock ones only on an idle machine. Writes ``bench/results/train_throughput.md`` with the
machine and its load. Never imports test code.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("ATOLL_QUIET", "1")


def load_job(path: Path, store: str, steps: int, cpus: float | None, limit: int | None, experts: int | None):
    """The job with the bench's overrides (store, steps, checkpoint cadence kept proportional, scaling)."""
    import yaml

    from atoll.spec import parse

    doc = yaml.safe_load(path.read_text())
    body = doc["spec"]
    body["store"] = {"uri": store}
    if limit:
        body["data"]["limit"] = limit
    base = parse(doc, str(path), path.parent).spec.experts.training
    ex = body.setdefault("experts", {})
    tr = ex.setdefault("training", {})
    tr["steps"] = steps
    tr["checkpointEvery"] = max(1, round(steps * base.checkpoint_every / base.steps))
    tr["logEvery"] = max(1, min(base.log_every, steps // 4 or 1))
    if cpus is not None:
        ex.setdefault("scaling", {})["cpusPerWorker"] = cpus
    if experts:
        doc["spec"]["partition"]["k"] = experts
    return parse(doc, str(path), path.parent)


# -- bare -------------------------------------------------------------------------------------------
def _bare_worker(job_dict: dict, threads: int, warmup: int, steps: int, port: int, barrier, out) -> None:
    os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    import torch

    torch.set_num_threads(threads)
    from atoll.spec import parse
    from atoll.train import deepspeed_engine as dse
    from atoll.train.tasks import Batch, ExpertTask, to_unit

    job = parse(job_dict, "bench")
    task = ExpertTask(job, 0)
    tr = task.training
    size = 28 if job.spec.data.source.type == "fashion-mnist" else 8
    task.sample_shape, task.num_classes = (1, size, size), 10  # what task.load() reads from the shards
    torch.manual_seed(0)
    engine = dse.initialize(task.build_model(), tr, 1, False)
    g = torch.Generator().manual_seed(0)
    batches = [Batch(to_unit(torch.randint(0, 256, (tr.batch_size, 1, size, size), dtype=torch.uint8)),
                     torch.randint(0, 10, (tr.batch_size,))) for _ in range(4)]

    def step(i: int) -> None:
        loss = task.loss(engine, batches[i % 4], g, torch.float32)
        engine.backward(loss)
        engine.step()

    for i in range(warmup):
        step(i)
    barrier.wait()
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(steps):
        step(i)
    out.put((steps * tr.batch_size, time.perf_counter() - t0, time.process_time() - c0))


def _collect(out, ps: list) -> list:
    """One result per process from ``out``; a process that dies first is an error, not a long wait."""
    res = []
    while len(res) < len(ps):
        try:
            res.append(out.get(timeout=5))
        except queue.Empty:
            dead = [p.exitcode for p in ps if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a measuring process exited with {dead[0]} (its traceback is above)") from None
    return res


def bare(job, procs: int, threads: int, warmup: int, steps: int) -> dict:
    """``procs`` concurrent bare-step processes of ``threads`` threads each: summed samples/s, samples per
    CPU-second."""
    from atoll.parallel.groups import free_port
    from atoll.spec import dump

    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(procs), ctx.Queue()
    ps = [ctx.Process(target=_bare_worker, args=(dump(job), threads, warmup, steps, free_port(), barrier, out))
          for _ in range(procs)]
    for p in ps:
        p.start()
    res = _collect(out, ps)
    for p in ps:
        p.join()
    return {"samples_s": sum(n / w for n, w, _ in res), "per_cpu_s": sum(n for n, _, _ in res) / sum(c for *_, c in res)}


class CpuMeter:
    """Every second: CPU seconds of this process's descendants (the Ray instance it started) and each
    island's progress (step, pid of its training worker), so a worker's CPU cost per sample can be taken
    between two of its progress reports (start-up excluded)."""

    def __init__(self, run, units: list):
        import threading

        self.run, self.units = run, units
        self.cpu: dict[int, float] = {}
        self.first: dict[int, tuple[int, float]] = {}   # pid -> (step, worker CPU s) at its first report
        self.last: dict[int, tuple[int, float]] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        import psutil

        for p in psutil.Process().children(recursive=True):
            try:
                c = p.cpu_times()
                self.cpu[p.pid] = c.user + c.system
            except psutil.Error:
                continue
        for u in self.units:
            try:
                pr = self.run.get_json(f"{u.prefix}/progress.json")
            except Exception:  # noqa: BLE001 - not written yet, or being replaced
                continue
            pid = pr.get("pid")
            if pr.get("state") != "training" or not pr.get("step") or pid not in self.cpu:
                continue
            self.first.setdefault(pid, (pr["step"], self.cpu[pid]))
            self.last[pid] = (pr["step"], self.cpu[pid])

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            self._sample()

    def __enter__(self):
        import psutil

        self.base = {p.pid: sum(p.cpu_times()[:2]) for p in psutil.Process().children(recursive=True)}
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(timeout=5)

    def all_seconds(self) -> float:
        return sum(c - self.base.get(pid, 0.0) for pid, c in self.cpu.items())

    def worker_steps_per_cpu_s(self) -> float:
        """Training steps per CPU second of the training workers between their first and last report."""
        steps = sum(self.last[p][0] - self.first[p][0] for p in self.last)
        secs = sum(self.last[p][1] - self.first[p][1] for p in self.last)
        return steps / secs if secs > 0 else float("nan")


def _costs_worker(job_dict: dict, steps: int, port: int, out) -> None:
    """CPU milliseconds of each part of the island loop's step, on one thread (load-robust: CPU time)."""
    os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    import torch

    torch.set_num_threads(1)
    import numpy as np

    from atoll.data.shards import commit_shards, write_samples_shard
    from atoll.spec import parse
    from atoll.store import open_store
    from atoll.train import checkpoints as ckpt
    from atoll.train import deepspeed_engine as dse
    from atoll.train.ds_master import MasterWeights
    from atoll.train.ema_shards import ShardedEMA
    from atoll.train.tasks import ExpertTask, expert_dir, partition_dir

    job = parse(job_dict, "bench")
    size = 28 if job.spec.data.source.type == "fashion-mnist" else 8
    tmp = tempfile.mkdtemp(prefix="atoll-costs-")
    run = open_store(tmp)
    rng = np.random.default_rng(0)  # one real (streamed, indexed) shard artifact of random images
    samples = [{"key": f"{i:06d}", "image": rng.integers(0, 256, (size, size, 1), dtype=np.uint8),
                "label": int(rng.integers(0, 10))} for i in range(4096)]
    commit_shards(run, partition_dir(0), [write_samples_shard(run, partition_dir(0), 0, samples)], num_classes=10)
    task = ExpertTask(job, 0)
    task.load(run)
    task.num_classes = 10
    torch.manual_seed(0)
    engine = dse.initialize(task.build_model(), task.training, 1, False)
    ema = ShardedEMA(MasterWeights(engine, task.training.zero_stage), task.training.ema_decay or 0.999)
    island, scratch = run.sub(expert_dir(0)), ckpt.scratch_dir("costs")
    cpu = torch.device("cpu")
    acc = {"data batch": 0.0, "DeepSpeed step": 0.0, "EMA update": 0.0}
    for s in range(steps + 3):
        c0 = time.process_time()
        b = task.batch(s, task.training.batch_size, 0, 1, 0, 1, cpu)
        c1 = time.process_time()
        loss = task.loss(engine, b, torch.Generator().manual_seed(s), torch.float32)
        engine.backward(loss)
        engine.step()
        c2 = time.process_time()
        ema.update()
        c3 = time.process_time()
        if s >= 3:
            for k, v in zip(acc, (c1 - c0, c2 - c1, c3 - c2)):
                acc[k] += v
    per_step = {k: 1000 * v / steps for k, v in acc.items()}
    c0 = time.process_time()
    for i in range(20):
        island.put_json("progress.json", {"step": i, "loss": 0.1})
    c1 = time.process_time()
    dse.save(engine, scratch, ckpt.tag(1), {"step": 1, "ema": ema.full_state_dict(), "ema_updates": ema.num_updates})
    c2 = time.process_time()
    ckpt.upload_rank_files(island, scratch, 1, lambda name: dse.owned_by_rank(name, 0))
    ckpt.commit(island, 1, {})
    c3 = time.process_time()
    out.put({"per_step": per_step, "progress_write": 1000 * (c1 - c0) / 20, "checkpoint_save": 1000 * (c2 - c1),
             "checkpoint_upload_commit": 1000 * (c3 - c2)})


def loop_costs(job, steps: int = 40) -> dict:
    from atoll.parallel.groups import free_port
    from atoll.spec import dump

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    p = ctx.Process(target=_costs_worker, args=(dump(job), steps, free_port(), out))
    p.start()
    (res,) = _collect(out, [p])
    p.join()
    return res


# -- islands ----------------------------------------------------------------------------------------
def islands(job) -> dict:
    from atoll import pipeline
    from atoll.islands.local import run_units
    from atoll.islands.plan import expert_units

    run = pipeline.open_run(job)
    pipeline.run(job, until="partition")
    units = expert_units(job)
    t0 = time.time()
    with CpuMeter(run, units) as cpu:
        out = run_units(job, run, None, units)
    wall = time.time() - t0
    if out.failed:
        raise RuntimeError(f"islands failed: {out.failed}")
    tr = job.spec.experts.training
    rates, spans = [], []
    for u in units:
        hist = run.get_json(f"{u.prefix}/metrics.json")["history"]
        # the first interval holds the first step's one-off costs (allocations, first checkpoint folder)
        rates.append(statistics.median(h["samples_per_s"] for h in hist[1:] or hist))
        spans.append(hist[-1]["time"])
    total = len(units) * tr.steps * tr.batch_size
    # islands training at once: as many as the CPUs hold (the scheduler's rule)
    cpus, per = float(os.cpu_count() or 1), job.spec.experts.scaling.cpus_per_worker
    at_once = max(1, min(len(units), int(cpus // per + 1e-9), job.spec.islands.max_concurrent or len(units)))
    return {"steady": at_once * statistics.mean(rates), "end_to_end": total / wall, "wall_s": wall,
            "at_once": at_once, "per_island": rates, "samples": total, "cpus_per_worker": per,
            "per_cpu_s_workers": cpu.worker_steps_per_cpu_s() * tr.batch_size,
            "per_cpu_s_all": total / max(1e-9, cpu.all_seconds())}


def machine() -> str:
    model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    return f"{model}, {os.cpu_count()} cores"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job", type=Path, default=REPO / "jobs" / "quickstart.yaml")
    ap.add_argument("--steps", type=int, default=240, help="training steps per expert (islands arm)")
    ap.add_argument("--bare-steps", type=int, default=200, help="timed steps per bare process")
    ap.add_argument("--also-cpus", type=float, default=None, help="a second islands arm with this cpusPerWorker")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N samples (smoke tests)")
    ap.add_argument("--experts", type=int, default=None, help="override partition.k")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "train_throughput.md")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="atoll-tp-") as tmp:
        job = load_job(args.job, tmp, args.steps, None, args.limit, args.experts)
        warm = max(2, args.bare_steps // 10)
        bare_rates = {f"{cores} x 1 thread": bare(job, cores, 1, warm, args.bare_steps)}
        if cores > 1:
            bare_rates[f"1 x {cores} threads"] = bare(job, 1, cores, warm, args.bare_steps)
        costs = loop_costs(job)
        ceiling = max(r["samples_s"] for r in bare_rates.values())
        per_cpu = bare_rates[f"{cores} x 1 thread"]["per_cpu_s"]
        arms = {f"cpusPerWorker {job.spec.experts.scaling.cpus_per_worker:g}": islands(job)}
        if args.also_cpus is not None:
            other = load_job(args.job, str(Path(tmp) / "other"), args.steps, args.also_cpus, args.limit, args.experts)
            arms[f"cpusPerWorker {args.also_cpus:g}"] = islands(other)
    load1 = os.getloadavg()
    tr = job.spec.experts.training
    lines = ["# Training throughput: islands vs the bare DeepSpeed step", "",
             f"Command: `python bench/train_throughput.py --steps {args.steps}"
             + (f" --also-cpus {args.also_cpus:g}" if args.also_cpus is not None else "") + "`", "",
             f"Machine: {machine()}; load average (1 min) {load0[0]:.1f} before, {load1[0]:.1f} after"
             + (" (shared with other work: ratios are side by side, absolute rates are not an idle machine's)"
                if max(load0[0], load1[0]) > 3 else ""), "",
             f"Model {job.spec.experts.model}, batch {tr.batch_size}, {job.spec.num_experts} experts x {args.steps} "
             f"steps (checkpoint every {tr.checkpoint_every}), fp32, torch threads = CPUs per island.", "",
             "| arm | samples/s | vs bare | samples per CPU-s | vs bare (1 thread) |", "|---|---|---|---|---|"]
    for name, r in bare_rates.items():
        lines.append(f"| bare step, {name} | {r['samples_s']:.0f} | {r['samples_s'] / ceiling:.0%} | "
                     f"{r['per_cpu_s']:.0f} | {r['per_cpu_s'] / per_cpu:.0%} |")
    for name, a in arms.items():
        lines.append(f"| islands ({name}, {a['at_once']} at once), steady | {a['steady']:.0f} | "
                     f"{a['steady'] / ceiling:.0%} | {a['per_cpu_s_workers']:.0f} (training workers, while training) | "
                     f"{a['per_cpu_s_workers'] / per_cpu:.0%} |")
        lines.append(f"| islands ({name}), end to end ({a['wall_s']:.0f} s incl. start-up) | "
                     f"{a['end_to_end']:.0f} | {a['end_to_end'] / ceiling:.0%} | {a['per_cpu_s_all']:.0f} (all Ray "
                     f"processes) | {a['per_cpu_s_all'] / per_cpu:.0%} |")
    step = costs["per_step"]
    ck = job.spec.experts.training.checkpoint_every
    le = job.spec.experts.training.log_every
    extra = (costs["progress_write"] * 2 / le + (costs["checkpoint_save"] + costs["checkpoint_upload_commit"]) / ck
             + step["data batch"] + step["EMA update"])
    lines += ["", "What the island loop adds to the bare step (CPU ms, one thread, measured in one process):", "",
              "| part | CPU ms |", "|---|---|"]
    lines += [f"| {k} (per step) | {v:.2f} |" for k, v in step.items()]
    lines += [f"| progress.json + metrics.json write (every {le} steps) | {2 * costs['progress_write']:.2f} |",
              f"| checkpoint save (every {ck} steps) | {costs['checkpoint_save']:.0f} |",
              f"| checkpoint upload + commit into a file store (every {ck} steps) | "
              f"{costs['checkpoint_upload_commit']:.0f} |",
              f"| **all of it, per step** | **{extra:.2f} ({extra / step['DeepSpeed step']:.1%} of the step)** |"]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps({"bare": bare_rates, "islands": arms, "loop_costs": costs,
                                                          "load": [load0, load1], "machine": machine()}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
