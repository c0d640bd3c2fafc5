"""DeepSpeed ZeRO stages 0-3 in fp32 and bf16 on CPU workers: samples/s and peak RSS per worker.

    python bench/zero_stages.py [--model DiT-S/2 --size 28 --workers 2 --steps 12 --batch 16]
        [--stages 0 1 2 3 --precisions fp32 bf16 --out bench/results/zero_stages.md]

Each configuration trains one expert through the product's island loop (``loop.train_island``)
in a group of ``--workers`` plain torch.distributed processes (``python -m atoll.train.worker``,
gloo on 127.0.0.1, 1 thread each), one configuration after the other, on the scikit-learn
digits scaled to ``--size``. Reported from the island's own manifest and metrics: samples/s over
the logged intervals after the first (the first holds DeepSpeed's warm-up), the peak RSS of each
worker (``ru_maxrss``: torch + DeepSpeed + model + optimizer state + activations), the ZeRO stage
the engine reports and the master-weight layout. The model is large enough (DiT-S/2: 33M
parameters, 132 MB of fp32 weights, 264 MB of Adam moments) that partitioning shows in RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))
from bench_runs import write_run  # noqa: E402  (bench/ is on sys.path when run as a script)


def _job(store: str, name: str, a, stage: int, precision: str) -> dict:
    return {"apiVersion": "atoll/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"store": {"uri": store}, "data": {"source": {"type": "digits"}, "imageSize": a.size},
                     "partition": {"k": 2, "fineClusters": 16},
                     "experts": {"model": a.model, "training": {
                         "steps": a.steps, "batchSize": a.batch, "zeroStage": stage, "precision": precision,
                         "emaDecay": 0.999, "checkpointEvery": 10**6, "logEvery": a.log_every, "lr": 1e-4},
                         "scaling": {"numWorkers": a.workers}}}}


def run_config(a, work: Path, stage: int, precision: str) -> dict:
    from atoll.islands.plan import Unit, loop_config
    from atoll.parallel.groups import free_port
    from atoll.spec import parse

    name = f"z{stage}-{precision}"
    job = parse(_job(str(work / "store"), name, a, stage, precision), source="zero_stages")
    run = write_run(job, a.size)
    cfg = work / f"{name}.json"
    cfg.write_text(json.dumps(loop_config(job, Unit("expert", 0, "experts/000"), run, None)))
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(a.workers),
           "DS_ACCELERATOR": "cpu", "ATOLL_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "platform"), os.environ.get("PYTHONPATH", "")])}
    t0 = time.time()
    procs = [subprocess.Popen([sys.executable, "-m", "atoll.train.worker", str(cfg)], cwd=str(ROOT),
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for r in range(a.workers)]
    errs = [p.communicate(timeout=a.timeout)[1] for p in procs]
    if any(p.returncode for p in procs):
        tail = b"\n".join(e[-2000:] for e in errs).decode(errors="replace")
        raise RuntimeError(f"{name} failed:\n{tail}")
    m = run.manifest("experts/000")
    hist = run.get_json("experts/000/metrics.json")["history"]
    steady = [h["samples_per_s"] for h in hist[1:]] or [hist[-1]["samples_per_s"]]
    return {"stage": stage, "precision": precision, "engine_stage": m["zero_stage"], "master": m["master_weights"],
            "samples_per_s": sum(steady) / len(steady), "peak_rss_mb": m["peak_rss_mb_per_rank"],
            "final_loss": m["final_loss"], "wall_s": time.time() - t0}


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{cpu}, {os.cpu_count()} cores, {platform.python_version()}; load average before: {load}"


def table(rows: list[dict], a, machine: str, load_after: str) -> str:
    base = {r["precision"]: r for r in rows if r["stage"] == 0}
    lines = [f"# ZeRO stages on CPU: {a.model} at {a.size}x{a.size}, {a.workers} gloo workers x 1 thread, "
             f"global batch {a.batch}, {a.steps} steps", "",
             f"Machine: {machine}; load average after: {load_after}.",
             f"Command: `python bench/zero_stages.py --model {a.model} --size {a.size} --workers {a.workers} "
             f"--steps {a.steps} --batch {a.batch}`", "",
             "| ZeRO | precision | engine stage | master weights | samples/s | vs stage 0 | peak RSS per worker (MB) | final loss |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = base.get(r["precision"])
        rel = f"{r['samples_per_s'] / b['samples_per_s']:.2f}x" if b else "-"
        lines.append(f"| {r['stage']} | {r['precision']} | {r['engine_stage']} | {r['master']} | "
                     f"{r['samples_per_s']:.1f} | {rel} | {' / '.join(f'{x:.0f}' for x in r['peak_rss_mb'])} | "
                     f"{r['final_loss']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="DiT-S/2")
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--log-every", type=int, default=4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    machine = _machine()
    work = Path(tempfile.mkdtemp(prefix="atoll-zero-bench-"))
    rows = []
    try:
        for precision in a.precisions:
            for stage in a.stages:
                r = run_config(a, work, stage, precision)
                print(f"ZeRO-{stage} {precision}: {r['samples_per_s']:.1f} samples/s, peak RSS {r['peak_rss_mb']} MB "
                      f"({r['wall_s']:.0f} s)", flush=True)
                rows.append(r)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = table(rows, a, machine, ", ".join(f"{x:.1f}" for x in os.getloadavg()))
    print("\n" + text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
