"""The product's CUDA paths at small size, in one command, with a pass/fail table.

    python bench/gpu_check.py                    # on a GPU machine (prints "no GPU, skipped" rows on CPU)
    python bench/gpu_check.py --bundle DIR       # here: the wheels it needs beside torch, into DIR
    python bench/gpu_check.py --wheels DIR       # there: install DIR's wheels (only them) and run
    python bench/gpu_check.py --cpu              # the same rows on CPU, tiny sizes (the smoke test)

It needs PyTorch (CUDA build, >= 2.11) and the common scientific packages only: no Ray, no
network. DeepSpeed and pydantic come from ``--bundle``'s folder (pure-Python wheels, plus
pydantic-core for the target's Python). Rows, each timed:

* ``islands``   a 2-expert job (DiT-S/2, 256 tokens) + the router through ``loop.train_island`` with the
                plain context (no Ray): bf16, DeepSpeed ZeRO-2, EMA on; manifests, device, loss falls;
* ``resume``    expert 0 resumed from its step-10 checkpoint ends with the uninterrupted weights;
* ``ensemble``  ``Ensemble.from_pretrained(run, device=cuda)`` top-1 sampling, everything on the GPU;
* ``serve``     the serve replicas' continuous-batching scheduler on the GPU: three requests batched ==
                the library's velocity;
* ``sp-video``  the sequence-parallel video forward at N=1 through NCCL == the plain forward;
* ``mfu``       DiT-B/2 at 256 tokens (32x32x4 latents), bf16, ZeRO-2: samples/s and MFU
                (model FLOPs / time / the GPU's dense bf16 peak; also vs a measured matmul peak).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))
from bench_runs import write_run  # noqa: E402  (bench/ is on sys.path when run as a script)

#: dense bf16 peaks (FLOP/s) from the vendors' data sheets, by a substring of the device name
BF16_PEAK = {"H200": 989.4e12, "H100 SXM": 989.4e12, "H100 PCIe": 756.0e12, "H100": 989.4e12,
             "A100": 312.0e12, "L40S": 362.0e12, "A10G": 70.0e12}
BUNDLE = ["deepspeed", "hjson", "pydantic", "pydantic-core", "annotated-types", "typing-inspection"]


# -- the bundle ------------------------------------------------------------------------
def bundle(out: Path, python: str = "3.12") -> int:
    """Builds/downloads the wheels the check needs beside torch into ``out``; prints their size."""
    from importlib.metadata import version

    out.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "-q"]
    for name in BUNDLE:
        pin = f"{name}=={version(name)}"
        if name == "pydantic-core":  # compiled: the target's Python and platform
            subprocess.run(pip + ["download", "--no-deps", "--only-binary=:all:", "--python-version", python,
                                  "--implementation", "cp", "--platform", "manylinux_2_17_x86_64",
                                  "--platform", "manylinux2014_x86_64", "-d", str(out), pin], check=True)
        else:  # pure Python (DeepSpeed builds its ops just in time; the wheel holds none)
            subprocess.run(pip + ["wheel", "--no-deps", "-w", str(out), pin], check=True,
                           env={**os.environ, "DS_BUILD_OPS": "0"})
    wheels = sorted(out.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels)
    for w in wheels:
        print(f"  {w.name}  {w.stat().st_size / 2**20:.2f} MiB")
    print(f"{len(wheels)} wheels, {size / 2**20:.1f} MiB in {out}")
    return 0


def install_wheels(folder: Path) -> None:
    """Installs the folder's wheels (no index, no dependencies) into a private site and uses it."""
    site = Path(tempfile.gettempdir()) / "atoll-gpu-check-site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--upgrade", "--target", str(site), *map(str, sorted(folder.glob("*.whl")))], check=True)
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])


# -- a tiny run without the Ray stages ----------------------------------------------
def _job(store: str, name: str, cpu: bool, steps: int, model: str, size: int) -> dict:
    return {"apiVersion": "atoll/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"store": {"uri": store}, "data": {"source": {"type": "digits"}, "imageSize": size},
                     "partition": {"k": 2, "fineClusters": 16},
                     "experts": {"model": model, "training": {
                         "steps": steps, "batchSize": 32 if cpu else 128, "zeroStage": 2, "emaDecay": 0.99,
                         "precision": "bf16", "checkpointEvery": 10, "logEvery": 5, "lr": 1e-3},
                         "scaling": {"useGpu": not cpu}},
                     "router": {"model": "Router-XS", "training": {
                         "steps": steps, "batchSize": 64, "checkpointEvery": 100, "logEvery": 5, "lr": 3e-3,
                         "precision": "bf16", "emaDecay": 0.0}, "scaling": {"useGpu": not cpu}}}}


# -- the rows ----------------------------------------------------------------------------
class Check:
    def __init__(self, cpu: bool, work: Path):
        import torch

        self.cpu, self.work = cpu, work
        self.device = torch.device("cpu") if cpu else torch.device("cuda", 0)
        self.state: dict = {}

    def islands(self) -> dict:
        from atoll.islands.plan import Unit, expert_units, loop_config, router_unit
        from atoll.spec import parse
        from atoll.train.context import plain_context
        from atoll.train.loop import train_island

        size = 16 if self.cpu else 32  # DiT-S/2 at 32x32: 256 tokens
        model = "DiT-XXS/2" if self.cpu else "DiT-S/2"
        job = parse(_job(str(self.work / "store"), "gpucheck", self.cpu, 12 if self.cpu else 30, model, size),
                    source="gpu_check")
        run = write_run(job, size)
        ctx = plain_context()
        t0 = time.time()
        for u in expert_units(job) + [router_unit()]:
            train_island(loop_config(job, u, run, None), ctx)
        wall = time.time() - t0
        ms = [run.manifest(u.prefix) for u in expert_units(job) + [router_unit()]]
        want = str(self.device)
        ok = all(m and m["precision"] == "bf16" and m["zero_stage"] == 2 and m["device"].startswith(want)
                 for m in ms)
        ok &= all(m["ema_device"] == want for m in ms[:2])
        hist = run.get_json("experts/000/metrics.json")["history"]
        ok &= hist[-1]["loss"] < hist[0]["loss"]
        self.state.update(job=job, run=run, ctx=ctx, unit=Unit("expert", 0, "experts/000"))
        return {"ok": ok, "wall_s": wall, "samples_per_s": [round(m["samples_per_s"] or 0) for m in ms],
                "final_loss": [round(m["final_loss"], 4) for m in ms], "device": ms[0]["device"]}

    def resume(self) -> dict:
        import torch

        from atoll.islands.plan import loop_config
        from atoll.models.checkpoint import from_pretrained
        from atoll.store import open_store
        from atoll.train.loop import train_island

        job, run, ctx, unit = (self.state[k] for k in ("job", "run", "ctx", "unit"))
        src = Path(run.local_path("experts/000/checkpoints"))
        steps = sorted(p.name for p in src.iterdir() if p.name.startswith("step-"))
        other = open_store(str(self.work / "store2")).sub(job.name)
        for name in ("data", "partition"):
            shutil.copytree(run.local_path(name), other.local_path(name), dirs_exist_ok=True)
        shutil.copytree(src / steps[0], Path(other.local_path("experts/000/checkpoints")) / steps[0])
        train_island(loop_config(job, unit, other, None), ctx)
        m = other.manifest("experts/000")
        a = from_pretrained(run, "experts/000/model", weights="raw").state_dict()
        b = from_pretrained(other, "experts/000/model", weights="raw").state_dict()
        err = max(float((a[k] - b[k]).abs().max()) for k in a)
        return {"ok": m["resumed_from_step"] == int(steps[0][5:]) and err < 1e-2, "resumed_from": m["resumed_from_step"],
                "max_abs_diff_vs_uninterrupted": err, "bit_identical": err == 0.0}

    def ensemble(self) -> dict:
        from atoll.devices import check_placed
        from atoll.sampling.ensemble import Ensemble

        ens = Ensemble.from_pretrained(self.state["run"], device=self.device)
        for i, e in enumerate(ens.experts):
            check_placed(e, self.device, f"expert {i}")
        check_placed(ens.router, self.device, "router")
        ens.sample(4, strategy="top1", steps=4, class_labels=1, guidance=2.0)  # warm-up
        t0 = time.time()
        res = ens.sample(32, strategy="top1", steps=20, class_labels=list(range(10)) * 3 + [0, 1], guidance=2.0)
        self.state["ens"] = ens
        return {"ok": tuple(res.images.shape[1:]) == ens.image_shape and res.expert_rows[0] + res.expert_rows[1] > 0,
                "images_per_s": round(32 / (time.time() - t0), 1), "expert_rows": res.expert_rows}

    def serve(self) -> dict:
        import asyncio

        import torch

        from atoll.serve.engine import LocalEngine
        from atoll.serve.scheduler import Scheduler, Work

        ens = self.state["ens"]  # router + experts on the device (the ensemble row)
        engine = LocalEngine(ens.router, ens.experts, device=self.device, num_classes=ens.num_classes,
                             image_shape=ens.image_shape)
        sched = Scheduler(engine, max_rows=64)
        works = [Work(6, label=1, steps=12, guidance=2.0, seed=1, strategy="top1"),
                 Work(5, label=4, steps=8, guidance=3.0, seed=2, strategy="full"),
                 Work(4, label=None, steps=10, guidance=1.5, seed=3, strategy="top2")]

        async def together():
            return await asyncio.gather(*[sched.generate(w) for w in works])

        t0 = time.time()
        outs = asyncio.run(together())
        wall = time.time() - t0
        diffs = []
        for w, o in zip(works, outs):  # continuous batching == each request alone through the library
            alone = ens.sample(w.n, class_labels=w.label, steps=w.steps, guidance=w.guidance, seed=w.seed,
                               strategy=w.strategy).images
            diffs.append(int((o.images.int() - alone.int()).abs().max()))
        st = sched.stats()
        return {"ok": max(diffs) <= 1 and st["max_rows_per_tick"] == sum(w.n for w in works),
                "max_uint8_diff_vs_alone": max(diffs), "max_rows_per_tick": st["max_rows_per_tick"],
                "mean_rows_per_expert_forward": round(st["mean_rows_per_expert_forward"], 1),
                "wall_s": round(wall, 2), "device": str(engine.device)}

    def sp_video(self) -> dict:
        import torch
        import torch.distributed as dist

        from atoll.models.video_dit import VideoDiTConfig
        from atoll.parallel.ulysses import sequence_parallel_forward

        torch.manual_seed(0)
        model = VideoDiTConfig(size="VDiT-XXS/4", input_size=16, frames=4, in_channels=1, temporal_patch=2,
                               num_classes=10).build().to(self.device).eval()
        x = torch.randn(2, 1, 4, 16, 16, device=self.device)
        t, y = torch.rand(2, device=self.device), torch.tensor([1, 2], device=self.device)
        with torch.no_grad():
            ref = model.forward_with_cfg(x, t, y, 2.0)
            out = sequence_parallel_forward(model, x, t, y, group=dist.group.WORLD, guidance=2.0)
        err = float((out - ref).abs().max())
        return {"ok": err < 1e-4, "backend": dist.get_backend(), "max_abs_diff": err}

    def mfu(self) -> dict:
        import torch

        from atoll.models import flops
        from atoll.models.dit import DiTConfig
        from atoll.spec.models import TrainingSpec
        from atoll.train import deepspeed_engine as dse

        size, batch, steps = ("DiT-XXS/2", 16, 3) if self.cpu else ("DiT-B/2", 256, 20)
        cfg = DiTConfig(size=size, input_size=32, in_channels=4, num_classes=1000)
        tr = TrainingSpec(steps=steps, batch_size=batch, zero_stage=2, precision="bf16", lr=1e-4)
        torch.manual_seed(0)
        engine = dse.initialize(cfg.build(), tr, 1, True)
        x = torch.randn(batch, 4, 32, 32, device=self.device, dtype=torch.bfloat16)
        t = torch.rand(batch, device=self.device, dtype=torch.bfloat16)
        y = torch.randint(0, 1000, (batch,), device=self.device)

        def step():
            loss = (engine(x, t, y=y).float() - x.float()).pow(2).mean()
            engine.backward(loss)
            engine.step()

        for _ in range(3):
            step()
        self._sync()
        t0 = time.time()
        for _ in range(steps):
            step()
        self._sync()
        sps = steps * batch / (time.time() - t0)
        model_flops = 3 * flops.dit_forward_flops(cfg) * sps
        peak, name = self._peak()
        measured = self._matmul_peak()
        return {"ok": sps > 0, "model": f"{size} @ {(32 // cfg.dims['patch_size']) ** 2} tokens, batch {batch}",
                "samples_per_s": round(sps, 1), "model_tflops": round(model_flops / 1e12, 1),
                "mfu_vs_datasheet": None if peak is None else round(model_flops / peak, 4),
                "peak_source": name, "mfu_vs_measured_matmul": round(model_flops / measured, 4),
                "measured_matmul_tflops": round(measured / 1e12, 1)}

    def _sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def _peak(self):
        import torch

        if self.device.type != "cuda":
            return None, "cpu (no data-sheet peak)"
        name = torch.cuda.get_device_name(self.device)
        for key, val in BF16_PEAK.items():
            if key in name:
                return val, f"{name}: {val / 1e12:.0f} TFLOP/s dense bf16"
        return None, f"{name}: unknown"

    def _matmul_peak(self) -> float:
        import torch

        n = 1024 if self.cpu else 8192
        a = torch.randn(n, n, device=self.device, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=self.device, dtype=torch.bfloat16)
        for _ in range(2):
            a @ b
        self._sync()
        reps = 2 if self.cpu else 10
        t0 = time.time()
        for _ in range(reps):
            a @ b
        self._sync()
        return 2 * n**3 * reps / (time.time() - t0)


ROWS = ["islands", "resume", "ensemble", "serve", "sp-video", "mfu"]


def run_checks(cpu: bool, out: Path | None) -> int:
    import torch

    have_gpu = torch.cuda.is_available()
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"{torch.cuda.get_device_name(0) if have_gpu else 'no GPU'}; rows on {'CPU (tiny sizes)' if cpu else 'GPU'}")
    results: dict[str, dict] = {}
    if not cpu and not have_gpu:
        results = {r: {"status": "skip", "detail": "no GPU, skipped"} for r in ROWS}
    else:
        work = Path(tempfile.mkdtemp(prefix="atoll-gpu-check-"))
        check = Check(cpu, work)
        for row in ROWS:
            if any(results[r]["status"] != "pass" for r in results if r in ("islands",)) and row != "mfu":
                results[row] = {"status": "skip", "detail": "needs the islands row"}
                continue
            t0 = time.time()
            try:
                numbers = getattr(check, row.replace("-", "_"))()
                status = "pass" if numbers.pop("ok") else "FAIL"
                results[row] = {"status": status, "seconds": round(time.time() - t0, 1), **numbers}
            except Exception as e:  # a row's failure is reported, the others still run
                results[row] = {"status": "FAIL", "seconds": round(time.time() - t0, 1),
                                "detail": f"{type(e).__name__}: {e}"[:300], "trace": traceback.format_exc()[-1500:]}
        shutil.rmtree(work, ignore_errors=True)
    _print(results)
    if out is not None:
        out.write_text(json.dumps(results, indent=1, sort_keys=True, default=str))
    return 0 if all(r["status"] in ("pass", "skip") for r in results.values()) else 1


def _print(results: dict) -> None:
    print(f"\n| check | status | seconds | numbers |\n|---|---|---|---|")
    for row, r in results.items():
        nums = ", ".join(f"{k}={v}" for k, v in r.items() if k not in ("status", "seconds", "trace"))
        print(f"| {row} | {r['status']} | {r.get('seconds', '')} | {nums} |")
    for row, r in results.items():
        if "trace" in r:
            print(f"\n--- {row} ---\n{r['trace']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, help="build the wheels the check needs beside torch into this folder")
    p.add_argument("--python", default="3.12", help="--bundle: the target machine's Python (default 3.12)")
    p.add_argument("--wheels", type=Path, help="install this folder's wheels (no index) before running")
    p.add_argument("--cpu", action="store_true", help="run every row on the CPU at tiny sizes (smoke test)")
    p.add_argument("--out", type=Path, help="also write the results as JSON")
    a = p.parse_args(argv)
    if a.bundle:
        return bundle(a.bundle, a.python)
    if a.wheels:
        install_wheels(a.wheels)
    if a.cpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return run_checks(a.cpu, a.out)


if __name__ == "__main__":
    sys.exit(main())
