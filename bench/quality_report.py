"""The quality bench's outputs: ``table.md`` (rows with 95% intervals, paired verdicts, the curve, the
compute), ``fid_vs_flops.png``, ``grids.png`` and ``scores.json``."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from quality_data import real_features
from quality_stats import paired_difference

NAMES = {"monolith": "monolith (all data)", "kmeans": "K=4 experts, k-means", "random": "K=4 experts, random",
         "kmeans8": "K=8 experts, k-means", "random8": "K=8 experts, random",
         "fmnist-png": "K=4 k-means, Fashion-MNIST as PNG folder", "mnist": "K=4 k-means, MNIST digits (5k)",
         "distilled": "one DiT distilled from K=4 k-means"}
COLORS = {"monolith": "k", "kmeans": "C0", "random": "C1", "kmeans8": "C2", "random8": "C3", "fmnist-png": "C4",
          "mnist": "C5", "distilled": "C6"}
ENSEMBLES = ("kmeans", "kmeans8", "random", "random8")


def machine(load_start: list[str]) -> str:
    import ray
    import torch

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "unknown")
    load = Path("/proc/loadavg").read_text().split()[:3]
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return (f"`nproc` = {nproc}, CPU: {cpu}, torch {torch.__version__}, ray {ray.__version__}, python "
            f"{sys.version.split()[0]}; load average at the start {' '.join(load_start)}, at the end {' '.join(load)}")


def _final(rows: list[dict], arm: str, strategy: str) -> dict | None:
    return next((r for r in rows if r["arm"] == arm and r["strategy"] == strategy and r.get("step") is None), None)


def _feats(work: Path, r: dict) -> np.ndarray:
    return np.load(work / r["run"] / f"{r['strategy'].replace(' ', '-').replace('@', 'at')}.feats.npy")


def _fid(r: dict) -> str:
    return f"{r['fid']:.2f} [{r['fid_lo']:.2f}, {r['fid_hi']:.2f}]"


def verdicts(rows: list[dict], work: Path) -> list[dict]:
    """Paired comparisons (same labels and noise per sample): each ensemble strategy vs the monolith,
    and the PNG-folder path vs the idx path."""
    out = []
    mono = _final(rows, "monolith", "-")
    pairs = []
    if mono:
        for arm in ENSEMBLES:
            pairs += [((arm, st), ("monolith", "-")) for st in ("top1", "top2", "full") if _final(rows, arm, st)]
    if mono and _final(rows, "distilled", "-"):
        pairs.append((("distilled", "-"), ("monolith", "-")))
    if _final(rows, "monolith", "raw"):  # the same comparisons with the raw (non-EMA) weights
        pairs += [((arm, "top1 raw"), ("monolith", "raw")) for arm in ENSEMBLES if _final(rows, arm, "top1 raw")]
        if _final(rows, "distilled", "raw"):
            pairs.append((("distilled", "raw"), ("monolith", "raw")))
    if _final(rows, "fmnist-png", "top1") and _final(rows, "kmeans", "top1"):
        pairs.append((("fmnist-png", "top1"), ("kmeans", "top1")))
    for (a_arm, a_st), (b_arm, b_st) in pairs:
        a, b = _final(rows, a_arm, a_st), _final(rows, b_arm, b_st)
        d = paired_difference(_feats(work, a), _feats(work, b), real_features(a["reference"]))
        word = {"a better": "ahead", "b better": "behind", "tie": "tie"}[d["verdict"]]
        out.append({"a": NAMES[a_arm] + ("" if a_st == "-" else f" {a_st}"), "b": NAMES[b_arm] + ("" if b_st == "-" else f" {b_st}"),
                    **d, "word": word})
    return out


def curve_points(rows: list[dict], flops: dict) -> dict[str, list[tuple[int, float, dict]]]:
    """Per arm: (step, training FLOPs so far: experts' share + the whole router, row) for top1 / the monolith."""
    out: dict[str, list] = {}
    for r in rows:
        if r["strategy"].split(" @ ")[0] in ("top1", "-") and r["arm"] in flops:
            step = r["step"] if r.get("step") is not None else r["train_steps"]
            fe, fr = flops[r["arm"]]
            out.setdefault(r["arm"], []).append((step, fe * step / r["train_steps"] + fr, r))
    return {arm: sorted(v, key=lambda p: p[0]) for arm, v in out.items()}


def table(rows, flops, walls, verdict_rows, *, size, command, total_s, load_start, inception) -> str:
    mono = _final(rows, "monolith", "-")
    head = "| model / partition | strategy | FID [95% CI] | class acc | precision | recall | GFLOPs/image | x monolith |"
    if inception:
        head = head[:-1] + " Inception FID |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if r.get("step") is not None or r["arm"] in ("fmnist-png", "mnist"):
            continue
        ratio = f"{r['gflops_per_image'] / mono['gflops_per_image']:.3f}" if mono else "-"
        cells = [NAMES[r["arm"]], r["strategy"], _fid(r), f"{r['class_accuracy']:.3f}", f"{r['precision']:.3f}",
                 f"{r['recall']:.3f}", f"{r['gflops_per_image']:.2f}", ratio]
        if inception:
            cells.append(f"{r.get('inception_fid', float('nan')):.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    vt = ["| row | against | FID difference [95% CI] | verdict |", "|---|---|---|---|"]
    vt += [f"| {v['a']} | {v['b']} | {v['diff']:+.2f} [{v['lo']:+.2f}, {v['hi']:+.2f}] | {v['word']} |"
           for v in verdict_rows]
    data = ["| arm | data path | model channels | top-1 FID [95% CI] | class acc | reference | its classifier's test acc |",
            "|---|---|---|---|---|---|---|"]
    for arm in ("kmeans", "fmnist-png", "mnist"):
        r = _final(rows, arm, "top1")
        if r:
            path = {"kmeans": "Fashion-MNIST idx files", "fmnist-png": "image folder of grey PNGs",
                    "mnist": "image folder of grey PNGs (4000 train)"}[arm]
            ref = "Fashion-MNIST test (10k)" if r["reference"] == "fashion-mnist" else "MNIST held-out (1000)"
            data.append(f"| {NAMES[arm]} | {path} | {r.get('channels', 1)} | {_fid(r)} | {r['class_accuracy']:.3f} "
                        f"| {ref} | {r.get('classifier_test_accuracy') or 0:.3f} |")
    curve = ["| model / partition | step | training FLOPs so far (experts + router) | FID [95% CI] | class acc |",
             "|---|---|---|---|---|"]
    for arm, pts in curve_points(rows, flops).items():
        for step, fl, r in pts:
            curve.append(f"| {NAMES[arm]} | {step} | {fl:.3e} | {_fid(r)} | {r['class_accuracy']:.3f} |")
    ft = ["| arm | experts' training FLOPs | router training FLOPs | total | train wall (this run) |",
          "|---|---|---|---|---|"]
    for arm, (fe, fr) in flops.items():
        w = f"{walls[arm] / 60:.1f} min" if arm in walls else "-"
        ft.append(f"| {NAMES[arm]} | {fe:.3e} | {fr:.3e} | {fe + fr:.3e} | {w} |")
    n = rows[0]["n"] if rows else 0
    return "\n".join([
        f"# Quality bench: decentralized ensemble vs monolith at equal training FLOPs ({size} size)", "",
        f"Command: `{command}`", "", f"Machine: {machine(load_start)}", "",
        f"Wall time of this invocation: {total_s / 60:.1f} min (committed stages and cached sample sets are "
        "skipped, so a resumed run reports only what it redid). Training and sampling are deterministic: the "
        "scores do not depend on the machine's load, the wall times do.", "",
        f"Each row: {n} class-balanced samples (the same labels and the same initial noise in every row), "
        "scored against real test images in the feature space of a CNN trained on the real training images "
        "(`atoll.eval`). FID [95% CI]: basic bootstrap over the generated and the real samples "
        "(`bench/quality_stats.py`); it covers which samples were drawn, not another training run. FID with "
        "this few samples is biased upward: compare rows, not with the paper. GFLOPs/image: router + selected "
        "experts, x2 with classifier-free guidance; x monolith: over the monolith's. Rows labelled `raw`: the "
        "final models with the experts' raw weights instead of their EMA (`emaDecay`; the other rows, and "
        "`atoll sample`, use the EMA weights).", "",
        *lines, "", "Paired comparisons (same samples resampled for both rows; verdict = the interval excludes 0):",
        "", *vt, "", "The recipe on other data paths and datasets (top-1):", "", *data, "",
        "Along training (the experts' EMA snapshots with the final router):", "", *curve, "",
        "Training compute (the distilled row: the student's training + the teacher's forward passes; the teacher "
        "ensemble's own training is the K=4 k-means row's):", "", *ft, "",
        "Plots: `fid_vs_flops.png`, `grids.png` (one row per model/strategy, one image per class).", ""])


def plot_fid_vs_flops(rows: list[dict], flops: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.6))
    for arm, pts in curve_points(rows, flops).items():
        if arm in ("fmnist-png", "mnist"):
            continue
        x = [p[1] / 1e12 for p in pts]
        y = np.array([p[2]["fid"] for p in pts])
        err = np.array([[p[2]["fid"] - p[2]["fid_lo"] for p in pts], [p[2]["fid_hi"] - p[2]["fid"] for p in pts]])
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=COLORS[arm],
                    label="monolith" if arm == "monolith" else f"{NAMES[arm]} top1")
    ax.set_yscale("log")
    ax.set_xlabel("training TFLOPs so far (experts + router)")
    ax.set_ylabel("FID, classifier features (log; lower is better)")
    ax.set_title("Equal training FLOPs: FID along training (95% bootstrap CI)")
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
    if not rows:
        return
    fig, axes = plt.subplots(len(rows), 1, figsize=(7, 0.8 * len(rows) + 0.4))
    for ax, r in zip(np.atleast_1d(axes), rows):
        imgs = np.load(work / r["run"] / f"{r['strategy'].replace(' ', '-').replace('@', 'at')}.npy")
        ax.imshow(grid_array(imgs, nrow=10), cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_ylabel(f"{r['arm']}\n{r['strategy']}", rotation=0, ha="right", va="center", fontsize=7)
    fig.subplots_adjust(left=0.22, right=0.98, top=0.99, bottom=0.01)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(out: Path, work: Path, rows, flops, walls, **kw) -> None:
    v = verdicts(rows, work)
    (out / "scores.json").write_text(json.dumps({"rows": rows, "train_flops": flops, "verdicts": v}, indent=1))
    plot_fid_vs_flops(rows, flops, out / "fid_vs_flops.png")
    plot_grids(rows, work, out / "grids.png")
    (out / "table.md").write_text(table(rows, flops, walls, v, **kw))

