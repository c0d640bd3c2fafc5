"""What a person looks at after partitioning: agreement with labels, a table, a picture."""
from __future__ import annotations

import io

import numpy as np


def agreement(labels: np.ndarray, assignment: np.ndarray, k: int, num_classes: int) -> dict:
    """ARI / NMI between clusters and labels, and each cluster's label histogram."""
    has = labels >= 0
    table = np.zeros((k, max(num_classes, 1)), np.int64)
    np.add.at(table, (assignment[has], labels[has]), 1)
    return agreement_from_table(table)


def _entropy(counts: np.ndarray) -> float:
    c = counts[counts > 0].astype(np.float64)
    n = c.sum()
    return float(-(c / n * (np.log(c) - np.log(n))).sum())


def agreement_from_table(table: np.ndarray) -> dict:
    """ARI / NMI (as scikit-learn computes them) from the cluster x label contingency table
    (labelled samples only): what the partition stage sums over its Ray tasks."""
    t = np.asarray(table, np.int64)
    hist = t.tolist()
    n = int(t.sum())
    if n == 0:
        return {"ari": None, "nmi": None, "labelled": 0, "label_histogram": hist}
    rows, cols = t.sum(1), t.sum(0)
    sq = int((t.astype(object) ** 2).sum())
    tp = sq - n
    fp = int((t.astype(object) * cols.astype(object)[None, :]).sum()) - sq
    fn = int((t.astype(object) * rows.astype(object)[:, None]).sum()) - sq
    tn = n * n - fp - fn - sq
    ari = 1.0 if fn == 0 and fp == 0 else 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))
    n_cl, n_lab = int((rows > 0).sum()), int((cols > 0).sum())
    if n_cl == n_lab == 1:
        nmi = 1.0
    else:
        nz = t > 0
        p = t[nz].astype(np.float64)
        outer = (rows[:, None].astype(np.float64) * cols[None, :])[nz]
        mi = float(max((p / n * (np.log(p) - np.log(outer) + np.log(n))).sum(), 0.0))
        nmi = 0.0 if mi == 0 else mi / max((_entropy(rows) + _entropy(cols)) / 2, np.finfo(np.float64).eps)
    return {"ari": float(ari), "nmi": float(nmi), "labelled": n, "label_histogram": hist}


def top_labels(hist: list[int], class_names: list[str] | None, n: int = 3) -> str:
    total = sum(hist)
    if not total:
        return "-"
    order = np.argsort(hist)[::-1][:n]
    name = (lambda i: class_names[i]) if class_names else str
    return ", ".join(f"{name(int(i))} {hist[i] / total:.0%}" for i in order if hist[i])


def print_summary(manifest: dict, class_names: list[str] | None) -> None:
    from rich.table import Table

    from atoll.progress import console

    m = manifest["agreement"]
    title = f"partition: {manifest['method']}, k={manifest['k']}, {manifest['count']} samples"
    if m["ari"] is not None:
        title += f" | ARI {m['ari']:.3f}  NMI {m['nmi']:.3f}"
    table = Table(title=title)
    for col in ("expert", "samples", "share", "top labels"):
        table.add_column(col, justify="right" if col in ("samples", "share") else "left")
    for c, size in enumerate(manifest["cluster_sizes"]):
        table.add_row(f"expert-{c:03d}", str(size), f"{size / manifest['count']:.1%}",
                      top_labels(m["label_histogram"][c], class_names))
    console().print(table)


def render_partition(picks: list[np.ndarray], manifest: dict, class_names: list[str] | None,
                     per_row: int = 12, max_rows: int = 32) -> bytes:
    """PNG: one row per cluster (up to ``max_rows``) with its sample images ``picks[c]`` (uint8
    [m, C, H, W], up to ``per_row``), its size and top labels."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    k = min(manifest["k"], max_rows)
    fig, axes = plt.subplots(k, per_row + 1, figsize=(1.0 * (per_row + 3), 1.05 * k + 0.4), squeeze=False,
                             gridspec_kw={"width_ratios": [3] + [1] * per_row})
    for c in range(k):
        hist = manifest["agreement"]["label_histogram"][c]
        axes[c, 0].text(0, 0.5, f"expert {c}\nn={manifest['cluster_sizes'][c]}\n{top_labels(hist, class_names, 2)}",
                        va="center", ha="left", fontsize=7)
        for j in range(per_row + 1):
            axes[c, j].axis("off")
        for j, im in enumerate(picks[c][:per_row]):
            img = im.transpose(1, 2, 0)
            gray = img.shape[2] == 1
            axes[c, j + 1].imshow(img[:, :, 0] if gray else img, cmap="gray" if gray else None, vmin=0, vmax=255)
    fig.suptitle(f"{manifest['method']} partition, k={manifest['k']}"
                 + (f" (showing {k})" if k < manifest["k"] else ""), fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
