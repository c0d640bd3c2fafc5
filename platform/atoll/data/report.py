"""What a person looks at after partitioning: agreement with labels, a table, a picture."""
from __future__ import annotations

import io

import numpy as np


def agreement(labels: np.ndarray, assignment: np.ndarray, k: int, num_classes: int) -> dict:
    """ARI / NMI between clusters and labels, and each cluster's label histogram."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    has = labels >= 0
    hist = [np.bincount(labels[(assignment == c) & has], minlength=max(num_classes, 1)).tolist() for c in range(k)]
    if not has.any():
        return {"ari": None, "nmi": None, "labelled": 0, "label_histogram": hist}
    return {"ari": float(adjusted_rand_score(labels[has], assignment[has])),
            "nmi": float(normalized_mutual_info_score(labels[has], assignment[has])),
            "labelled": int(has.sum()), "label_histogram": hist}


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


def render_partition(images: np.ndarray, assignment: np.ndarray, manifest: dict, class_names: list[str] | None,
                     per_row: int = 12, max_rows: int = 32, seed: int = 0) -> bytes:
    """PNG: one row per cluster (up to ``max_rows``) with ``per_row`` sample images, its size and top labels."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    k = min(manifest["k"], max_rows)
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(k, per_row + 1, figsize=(1.0 * (per_row + 3), 1.05 * k + 0.4), squeeze=False,
                             gridspec_kw={"width_ratios": [3] + [1] * per_row})
    gray = images.shape[1] == 1
    for c in range(k):
        idx = np.flatnonzero(assignment == c)
        pick = np.sort(rng.choice(idx, min(per_row, len(idx)), replace=False)) if len(idx) else []
        hist = manifest["agreement"]["label_histogram"][c]
        axes[c, 0].text(0, 0.5, f"expert {c}\nn={manifest['cluster_sizes'][c]}\n{top_labels(hist, class_names, 2)}",
                        va="center", ha="left", fontsize=7)
        for j in range(per_row + 1):
            axes[c, j].axis("off")
        for j, i in enumerate(pick):
            img = images[i].transpose(1, 2, 0)
            axes[c, j + 1].imshow(img[:, :, 0] if gray else img, cmap="gray" if gray else None, vmin=0, vmax=255)
    fig.suptitle(f"{manifest['method']} partition, k={manifest['k']}"
                 + (f" (showing {k})" if k < manifest["k"] else ""), fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
