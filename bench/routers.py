"""Which router: routing accuracy vs t, end quality and cost per step of candidate routers, same experts.

    .venv/bin/python bench/routers.py [--arm kmeans|kmeans8] [--size default|small] [--num-per-class 20]

Takes a trained quality-bench arm (``bench/quality.py``: its data, partition and experts in the store)
and, for each candidate (router size x conditioning), trains only the router through the product path
(``pipeline.run(until="router")`` on a copy of the run with another ``router`` section: the experts'
fingerprints match, so they are reused), reads the island's accuracy vs t (with the class and with
the null class), samples top-1 with the same labels and noise as the bench, and scores it
(FID [95% CI], class accuracy). Writes ``bench/results/quality/routers.md``, ``routers.json`` and
``routers.png`` (accuracy vs t per candidate).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from atoll import pipeline, spec
from atoll.progress import console

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import quality  # noqa: E402

#: (router size, conditioning) candidates; the first is the old default
CANDIDATES = [("Router-S", "auto"), ("Router-XS", "auto"), ("Router-S@16", "auto"), ("Router-XS@16", "auto"),
              ("Router-XS@16", "none")]


def slug(size: str, cond: str) -> str:
    return size.lower().replace("router-", "").replace("@", "at") + ("-nocls" if cond == "none" else "")


def variant(base: spec.JobSpec, size: str, cond: str) -> spec.JobSpec:
    doc = spec.dump(base)
    doc["metadata"]["name"] = f"{base.name}-r-{slug(size, cond)}"
    doc["spec"]["router"] = {**doc["spec"]["router"], "model": size, "conditioning": cond}
    return spec.parse(doc)


def clone_run(base: spec.JobSpec, job: spec.JobSpec, store: str, experts: bool) -> None:
    """The base run's committed data, partition (and experts), copied into the variant's run (file store)."""
    src, dst = Path(store) / base.name, Path(store) / job.name
    same_router = job.spec.router == base.spec.router and (src / "router" / "manifest.json").exists()
    for part in ("data", "partition") + (("experts",) if experts else ()) + (("router",) if same_router else ()):
        if not (dst / part).exists():
            shutil.copytree(src / part, dst / part)


def score_top1(job: spec.JobSpec, store: str, work: Path, num_per_class: int) -> dict:
    from atoll.sampling import Ensemble

    key = work / quality.run_tag(job) / f"top1-n{num_per_class}"
    if key.with_suffix(".json").exists():
        return json.loads(key.with_suffix(".json").read_text())
    s = job.spec.sample
    labels = torch.arange(10).repeat(num_per_class)
    ens = Ensemble.from_pretrained(pipeline.open_run(job, store))
    res = ens.sample(labels, strategy="top1", steps=s.steps, guidance=s.guidance, seed=s.seed, batch_size=128)
    key.parent.mkdir(parents=True, exist_ok=True)
    m = quality.score_samples(res.images, labels, "fashion-mnist", key)
    row = {"gflops_per_image": res.gflops_per_image, "sample_wall_s": res.wall_s, "n": len(labels), **m}
    key.with_suffix(".json").write_text(json.dumps(row, indent=1))
    return row


def main(argv: list[str] | None = None) -> int:
    from atoll.planning import model_configs, data_shape, router_share, uses_cfg

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arm", default="kmeans", choices=["kmeans", "kmeans8"])
    p.add_argument("--size", default="default", choices=["default", "small"])
    p.add_argument("--store", default="runs")
    p.add_argument("--num-per-class", type=int, default=20, help="top-1 samples per class to score")
    p.add_argument("--candidates", default=None, help="comma-separated SIZE[:CONDITIONING] (default: all)")
    p.add_argument("--out", type=Path, default=quality.OUT)
    p.add_argument("--accuracy-only", action="store_true",
                   help="train the routers and read their accuracy vs t; no experts needed, no sampling")
    a = p.parse_args(argv)
    t0 = time.time()
    cands = CANDIDATES if not a.candidates else [tuple((c + ":auto").split(":")[:2]) for c in a.candidates.split(",")]
    base = quality.load_arm(a.arm, a.size)
    base_run = pipeline.open_run(base, a.store)
    if not pipeline.is_complete(base_run, base, "partition"):
        raise SystemExit(f"run the {a.arm} arm first: python bench/quality.py --train-only --arms {a.arm}")
    scored = not a.accuracy_only
    if scored and not pipeline.is_complete(base_run, base, "experts"):
        raise SystemExit(f"train the {a.arm} arm's experts first (python bench/quality.py --train-only --arms "
                         f"{a.arm}), or pass --accuracy-only")
    work = quality.OUT / "work"
    rows = []
    for size, cond in cands:
        job = variant(base, size, cond)
        clone_run(base, job, a.store, experts=scored)
        console().rule(f"[bold]{size} ({cond})[/bold]")
        run = pipeline.open_run(job, a.store)
        if not pipeline.is_complete(run, job, "router"):
            from atoll import stages

            stages.router(job, run, None)  # the router island alone: it needs the partition, not the experts
        m = run.manifest("router")
        expert, router = model_configs(job, data_shape(job))
        q = score_top1(job, a.store, work, a.num_per_class) if scored else {}
        rows.append({"size": size, "conditioning": "class" if router.num_classes else "none",
                     "tokens": router.num_tokens, "share_per_step": router_share(expert, router, uses_cfg(job)),
                     "train_flops": m["train_flops"], "accuracy_vs_t": m["accuracy_vs_t"],
                     "accuracy_vs_t_no_class": m.get("accuracy_vs_t_no_class"), **q})
        console().print(f"  {size} {cond}: acc {m['accuracy_vs_t']}  " + (
            f"top1 FID {q['fid']:.2f} acc {q['class_accuracy']:.3f}" if q else ""))
    a.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if (a.arm, a.size) == ("kmeans", "default") else f"-{a.arm}-{a.size}"
    rows = merged_rows(a.out / f"routers{suffix}.json", rows)
    (a.out / f"routers{suffix}.json").write_text(json.dumps(rows, indent=1))
    (a.out / f"routers{suffix}.md").write_text(table(rows, base, a, time.time() - t0))
    plot(rows, a.out / f"routers{suffix}.png", base.spec.partition.k)
    console().print((a.out / f"routers{suffix}.md").read_text())
    return 0


def table(rows: list[dict], base: spec.JobSpec, a, wall: float) -> str:
    ts = list(rows[0]["accuracy_vs_t"])
    head = ("| router | sees | tokens | router / expert per step (CFG) | router training FLOPs | "
            + " | ".join(f"acc t={t}" for t in ts) + " | top-1 FID [95% CI] | class acc | GFLOPs/image |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        acc = [f"{v:.3f}" for v in r["accuracy_vs_t"].values()]
        q = (f" | {r['fid']:.2f} [{r['fid_lo']:.2f}, {r['fid_hi']:.2f}] | {r['class_accuracy']:.3f} "
             f"| {r['gflops_per_image']:.2f} |") if "fid" in r else " | not sampled | | |"
        lines.append(f"| {r['size']} | x_t, t{', y' if r['conditioning'] == 'class' else ''} | {r['tokens']} | "
                     f"{r['share_per_step']:.1%} | {r['train_flops']:.2e} | " + " | ".join(acc) + q)
        if r["accuracy_vs_t_no_class"]:
            lines.append(f"| {r['size']} (null class) | x_t, t | | | | "
                         + " | ".join(f"{v:.3f}" for v in r["accuracy_vs_t_no_class"].values()) + " | | | |")
    return "\n".join([
        f"# Router candidates on the {base.spec.partition.k} experts of `{base.name}` ({a.size} size)", "",
        f"Command: `python bench/routers.py --arm {a.arm} --size {a.size} --num-per-class {a.num_per_class}"
        f"{' --accuracy-only' if a.accuracy_only else ''}`; "
        f"wall {wall / 60:.1f} min; load average at the end {' '.join(Path('/proc/loadavg').read_text().split()[:3])}.",
        "", "Every router: the same recipe (router.training of the arm), trained on the same partition; accuracy = "
        "argmax against the true cluster on 1024 training samples noised to t (the island's manifest). Top-1 rows: "
        f"{rows[0]['n']} samples (same labels, same noise), FID against the Fashion-MNIST test set with a 95% "
        "bootstrap interval. Chance accuracy: 1/K.", "", *lines, ""])


def merged_rows(path: Path, new: list[dict]) -> list[dict]:
    """Earlier rows of the same file (other candidates, or scored ones) kept, the new ones replacing theirs."""
    old = json.loads(path.read_text()) if path.exists() else []
    key = lambda r: (r["size"], r["conditioning"])  # noqa: E731
    fresh = {key(r): r for r in new}
    kept = [fresh.pop(key(r)) if key(r) in fresh else r for r in old]
    return kept + list(fresh.values())


def plot(rows: list[dict], path: Path, k: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, r in enumerate(rows):
        ts = [float(t) for t in r["accuracy_vs_t"]]
        label = f"{r['size']} {'(x_t, t, y)' if r['conditioning'] == 'class' else '(x_t, t)'}, {r['share_per_step']:.1%}"
        ax.plot(ts, list(r["accuracy_vs_t"].values()), marker="o", color=f"C{i}", label=label)
        if r["accuracy_vs_t_no_class"]:
            ax.plot(ts, list(r["accuracy_vs_t_no_class"].values()), ls="--", color=f"C{i}", alpha=0.6)
    ax.axhline(1 / k, color="grey", lw=0.8, ls=":", label="chance")
    ax.set_xlabel("noise level t (1 = pure noise)")
    ax.set_ylabel("routing accuracy (true cluster)")
    ax.set_title("Router accuracy vs t (dashed: class router given the null class)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
