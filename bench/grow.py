"""Growing an ensemble (``atoll add-experts``) vs retraining it from scratch, FLOP for FLOP.

    .venv/bin/python bench/grow.py [--size small|default] [--k 4] [--new-classes 8,9] [--store DIR] [--out DIR]

Fashion-MNIST, its 60k training images as PNG image folders (``bench/quality_data.py``):

* ``before``: K experts (k-means) + router trained on the *old* classes only (all but ``--new-classes``);
  the new classes were never seen, so asking for them shows what the ensemble cannot do yet.
* ``grown``: ``before`` + ``add_experts`` with the new classes' images as new data: one new expert on
  its own island, the router fine-tuned from the old one (K+1 heads); the K old experts are not touched.
* ``retrained``: K+1 experts + router from scratch on all 60k images (read from the idx files: the PNG and
  idx paths score alike, ``bench/results/quality``), the experts' steps raised so its total training
  FLOPs (experts + router) equal the grown arm's (before + new expert + router fine-tune).

Each arm draws the same class-balanced top-1 samples (the same labels and initial noise), with the
experts' EMA weights (what ``atoll sample`` loads) and their raw weights, scored per class group (old
classes, new classes): class accuracy and FID in the reference classifier's feature space with a 95%
bootstrap interval (``bench/quality_stats.py``). Writes ``bench/results/grow[/SIZE]/``: ``table.md``,
``scores.json``, ``grids.png``. Resumable: committed stages are skipped and scored sets cached.
"""
from __future__ import annotations

import argparse
import json
import math
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
from quality import SIZES, merge  # noqa: E402  (bench/ helpers, next to this script)
from quality_data import fmnist_split_folders, reference, to_grey  # noqa: E402
from quality_stats import fid_interval  # noqa: E402

OUT = HERE / "results" / "grow"
BASE = HERE / "quality" / "kmeans.yaml"  # the quality bench's K=4 ensemble recipe


def make_job(name: str, folder: Path | None, k: int, size: str, steps: int | None = None) -> spec.JobSpec:
    """The quality bench's k-means recipe, ``k`` experts, final models only, on an image folder (None: its
    own source, the 60k Fashion-MNIST training images)."""
    doc = yaml.safe_load(BASE.read_text())
    doc["spec"] = merge(doc["spec"], SIZES[size])
    doc["metadata"]["name"] = name + ("" if size == "default" else f"-{size}")
    s = doc["spec"]
    if folder is not None:
        s["data"] = {**{k_: v for k_, v in s["data"].items() if k_ != "source"},
                     "source": {"type": "image-folder", "path": str(folder)}}
    s["partition"]["k"] = k
    s["experts"]["training"]["snapshotEvery"] = 0
    if steps is not None:
        s["experts"]["training"]["steps"] = steps
    s["sample"]["strategies"] = ["top1"]
    return spec.parse(doc, source=str(BASE), base=BASE.parent)


def flops_of(run, prefixes: list[str]) -> float:
    return float(sum(run.manifest(p)["train_flops"] for p in prefixes))


# -- scoring ---------------------------------------------------------------------------------------------
def score(arm: str, job: spec.JobSpec, store: str, weights: str, new: tuple[int, ...], work: Path) -> dict:
    """Top-1 samples of every class (``sample.numPerClass`` each), scored on the old and the new classes
    apart; cached under ``work`` (``<arm>-<weights>.json`` and the first sample of each class)."""
    from atoll.eval.classifier import features
    from atoll.eval.metrics import evaluate_samples
    from atoll.sampling import Ensemble
    from atoll.sampling.evaluate import to_classifier_size

    key = work / f"{arm}-{weights}"
    if key.with_suffix(".json").exists():
        console().print(f"  {arm} / {weights}: cached")
        return json.loads(key.with_suffix(".json").read_text())
    s = job.spec.sample
    labels = torch.arange(10).repeat(s.num_per_class)
    ens = Ensemble.from_pretrained(pipeline.open_run(job, store), weights=weights)
    res = ens.sample(labels, strategy="top1", steps=s.steps, guidance=s.guidance, seed=s.seed, batch_size=128)
    imgs = to_grey(to_classifier_size(res.images))
    ref = reference("fashion-mnist")
    row = {"arm": arm, "weights": weights, "num_experts": ens.num_experts, "n": len(labels),
           "gflops_per_image": res.gflops_per_image, "sample_wall_s": res.wall_s}
    for part, keep in (("old", ~np.isin(labels.numpy(), new)), ("new", np.isin(labels.numpy(), new))):
        real = np.isin(ref.labels, new) if part == "new" else ~np.isin(ref.labels, new)
        m = evaluate_samples(imgs[keep], labels[keep], ref.images[real], ref.labels[real], ref.classifier)
        ci = fid_interval(features(ref.classifier, imgs[keep]), features(ref.classifier, ref.images[real]))
        row[part] = {"fid": m["fid"], "fid_lo": ci["lo"], "fid_hi": ci["hi"], "class_accuracy": m["class_accuracy"],
                     "n": int(keep.sum())}
    key.parent.mkdir(parents=True, exist_ok=True)
    np.save(key.with_suffix(".npy"), imgs[:10].numpy())
    key.with_suffix(".json").write_text(json.dumps(row, indent=1))
    console().print(f"  {arm} / {weights}: old classes FID {row['old']['fid']:.2f} acc {row['old']['class_accuracy']:.3f}"
                    f" | new classes FID {row['new']['fid']:.2f} acc {row['new']['class_accuracy']:.3f}")
    return row


# -- the report ------------------------------------------------------------------------------------------
LABELS = {"before": "before: K experts on the old classes", "grown": "grown: + add-experts (new classes)",
          "retrained": "retrained from scratch on all classes"}


def write_report(out: Path, work: Path, rows: list[dict], flops: dict, walls: dict, *, k: int, new: tuple[int, ...],
                 steps: dict, size: str, command: str, load: list[str], total_s: float) -> None:
    from quality_report import machine

    def cell(p: dict) -> str:
        return f"{p['fid']:.2f} [{p['fid_lo']:.2f}, {p['fid_hi']:.2f}] | {p['class_accuracy']:.3f}"

    lines = [f"# Grow bench: add-experts vs retraining from scratch at equal training FLOPs ({size} size)", "",
             f"Command: `{command}`", "", f"Machine: {machine(load)}", "",
             f"Wall time of this invocation: {total_s / 60:.1f} min (committed stages and cached scores are skipped).", "",
             f"Fashion-MNIST, K={k} k-means experts on the classes other than {list(new)} (the old data), then "
             f"`add_experts` with the images of classes {list(new)} (the new data, one new expert, router fine-tuned); "
             f"next to K+1 experts retrained from scratch on all of it with the same total training FLOPs. "
             "Top-1 samples, the same labels and noise in every row; FID [95% CI] in the reference classifier's "
             "feature space against the real test images of the same classes, and class accuracy.", "",
             "| arm | weights | experts | old classes: FID [95% CI] | old: class acc | new classes: FID [95% CI] "
             "| new: class acc |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {LABELS[r['arm']]} | {'EMA' if r['weights'] == 'model' else 'raw'} | {r['num_experts']} | "
                     f"{cell(r['old'])} | {cell(r['new'])} |")
    lines += ["", "Training FLOPs (from the committed manifests):", "",
              "| arm | experts | router | total | train wall (this run) |", "|---|---|---|---|---|"]
    for arm, (e, r) in flops.items():
        lines.append(f"| {LABELS[arm]} | {e:.3e} | {r:.3e} | {e + r:.3e} | {walls.get(arm, 0.0) / 60:.1f} min |")
    lines += ["", f"Steps per expert: {steps['grown']} (before and the added expert), {steps['retrained']} (retrained: "
              "its extra steps pay for the grown arm's router fine-tuning, rounded up to whole steps)."]
    lines += ["", "The grown arm's FLOPs are the before arm's plus the new expert and the router's fine-tuning; "
              "the old experts' weight files are byte-identical before and after (checked by this bench).", ""]
    (out / "table.md").write_text("\n".join(lines))
    (out / "scores.json").write_text(json.dumps({"rows": rows, "train_flops": flops, "new_classes": list(new),
                                                 "k": k, "expert_steps": steps}, indent=1))
    plot_grids(out / "grids.png", work, rows)


def plot_grids(path: Path, work: Path, rows: list[dict]) -> None:
    """One row per arm and weights, one column per class: the first sample of each class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 10, figsize=(10, 1.1 * len(rows) + 0.4), squeeze=False)
    for i, r in enumerate(rows):
        imgs = np.load(work / f"{r['arm']}-{r['weights']}.npy")
        for c in range(10):
            ax = axes[i][c]
            ax.imshow(imgs[c, 0], cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"{r['arm']}\n{'EMA' if r['weights'] == 'model' else 'raw'}", fontsize=7)
            if i == 0:
                ax.set_title(f"class {c}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main ----------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    from atoll.grow import add_experts

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=["small", "default"], default="default")
    p.add_argument("--k", type=int, default=4, help="experts before growing (default 4)")
    p.add_argument("--new-classes", default="8,9", help="the classes added later (default 8,9)")
    p.add_argument("--store", default="runs", help="store folder for the runs (default ./runs)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default bench/results/grow[/SIZE])")
    p.add_argument("--work", type=Path, default=HERE / "results" / "quality" / "work",
                   help="image folders (shared with bench/quality.py)")
    a = p.parse_args(argv)
    t0, load0 = time.time(), Path("/proc/loadavg").read_text().split()[:3]
    new = tuple(int(c) for c in a.new_classes.split(","))
    out = a.out or (OUT if a.size == "default" else OUT / a.size)
    scored = out / "work"
    scored.mkdir(parents=True, exist_ok=True)
    limit = SIZES[a.size].get("data", {}).get("limit")
    old_folder, new_folder = fmnist_split_folders(a.work, new, limit)
    job = make_job("bg-grow", old_folder, a.k, a.size)
    walls, rows, flops = {}, [], {}

    console().rule(f"[bold]before[/bold]: K={a.k} experts on the old classes ({job.name})")
    t = time.time()
    pipeline.run(job, until="router", store_uri=a.store)
    walls["before"] = time.time() - t
    run = pipeline.open_run(job, a.store)
    old_prefixes = [f"experts/{k:03d}" for k in range(a.k)]
    flops["before"] = (flops_of(run, old_prefixes), flops_of(run, ["router"]))
    if not run.exists("experts/registry.json"):  # version 1 is what `before` scores; growing changes it
        rows += [score("before", job, a.store, w, new, scored) for w in ("model", "raw")]
    else:
        rows += [json.loads((scored / f"before-{w}.json").read_text()) for w in ("model", "raw")]
    old_files = {f: run.get_bytes(f) for f in run.list("experts") if f.startswith(tuple(old_prefixes))}

    console().rule("[bold]grown[/bold]: add-experts with the new classes")
    t = time.time()
    data = {"source": {"type": "image-folder", "path": str(new_folder)}, "shardSize": job.spec.data.shard_size}
    reg = add_experts(job, data, new_experts=1, store_uri=a.store, on_progress=lambda m: console().print(f"  {m}"))
    walls["grown"] = time.time() - t
    changed = [f for f, b in old_files.items() if run.get_bytes(f) != b]
    if changed:
        raise SystemExit(f"add-experts changed the old experts' files: {changed[:3]}")
    event = next(h for h in reg["history"] if h.get("action") == "add")
    flops["grown"] = (flops["before"][0] + event["experts_train_flops"], flops["before"][1] + event["router_train_flops"])
    rows += [score("grown", job, a.store, w, new, scored) for w in ("model", "raw")]

    # retrained: K+1 experts whose steps make up the router fine-tuning's FLOPs too
    steps = job.spec.experts.training.steps
    per_expert = event["experts_train_flops"]  # one expert at `steps` steps (same recipe and batch)
    rsteps = math.ceil(steps * (1 + event["router_train_flops"] / ((a.k + 1) * per_expert)))
    rjob = make_job("bg-retrain", None, a.k + 1, a.size, steps=rsteps)
    console().rule(f"[bold]retrained[/bold]: K={a.k + 1} from scratch, {rsteps} steps ({rjob.name})")
    t = time.time()
    pipeline.run(rjob, until="router", store_uri=a.store)
    walls["retrained"] = time.time() - t
    rrun = pipeline.open_run(rjob, a.store)
    flops["retrained"] = (flops_of(rrun, [f"experts/{k:03d}" for k in range(a.k + 1)]), flops_of(rrun, ["router"]))
    rows += [score("retrained", rjob, a.store, w, new, scored) for w in ("model", "raw")]

    command = "python bench/grow.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_report(out, scored, rows, flops, walls, k=a.k, new=new, steps={"grown": steps, "retrained": rsteps},
                 size=a.size, command=command.strip(),
                 load=load0, total_s=time.time() - t0)
    console().print((out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
