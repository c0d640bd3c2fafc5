"""The run report: one Markdown page with the pictures and numbers of every stage.

Written to ``report/index.md`` beside copies of the pictures it shows, so the
folder can be opened anywhere (a file browser, GitHub, an S3 console).
"""
from __future__ import annotations

from atoll.spec import JobSpec
from atoll.store import Store


def _copy(run: Store, src: str, dst: str, pictures: list[str]) -> str | None:
    if not run.exists(src):
        return None
    run.put_bytes(f"report/{dst}", run.get_bytes(src))
    pictures.append(dst)
    return dst


def _fmt(x, digits=3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def build_markdown(job: JobSpec, run: Store) -> tuple[str, list[str]]:
    pics: list[str] = []
    lines = [f"# Atoll run `{job.name}`", "", f"Store: `{run.uri}`", ""]
    stages = run.get_json("stages.json") if run.exists("stages.json") else {}
    if stages:
        lines += ["## Wall times", "", "| stage | wall time (s) |", "|---|---|"]
        lines += [f"| {k} | {v['wall_s']:.1f} |" for k, v in stages.items()]
        lines += [f"| **total** | **{sum(v['wall_s'] for v in stages.values()):.1f}** |", ""]

    data = run.manifest("data") or {}
    part = run.manifest("partition") or {}
    lines += ["## Data and partition", "", f"{data.get('count', '?')} samples, {part.get('k', '?')} clusters "
              f"({part.get('method', '?')}).", ""]
    for key in ("ari", "nmi", "adjusted_rand_index", "normalized_mutual_info"):
        if key in part:
            lines.append(f"- {key}: {_fmt(part[key])}")
    sizes = part.get("sizes") or part.get("cluster_sizes")
    if sizes:
        lines.append(f"- cluster sizes: {sizes}")
    if _copy(run, "partition/partition.png", "partition.png", pics):
        lines += ["", "![partition](partition.png)", ""]

    lines += ["## Experts", "", "| expert | samples | steps | batch | final loss | samples/s | train FLOPs |",
              "|---|---|---|---|---|---|---|"]
    total = 0
    for k in range(job.spec.num_experts):
        m = run.manifest(f"experts/{k:03d}") or {}
        total += m.get("train_flops", 0)
        lines.append(f"| {k} | {_fmt(m.get('num_samples'))} | {_fmt(m.get('steps'))} | {_fmt(m.get('batch_size'))} "
                     f"| {_fmt(m.get('final_loss'), 4)} | {_fmt(m.get('samples_per_s'), 0)} "
                     f"| {m.get('train_flops', 0):.3e} |")
    lines += ["", f"Total expert training FLOPs: **{total:.3e}**", ""]
    curves = [_copy(run, f"experts/{k:03d}/losses.png", f"losses-expert-{k:03d}.png", pics)
              for k in range(job.spec.num_experts)]
    lines += [" ".join(f"![loss {c}]({c})" for c in curves if c), ""]

    router = run.manifest("router")
    if router:
        acc = router.get("accuracy_vs_t", {})
        lines += ["## Router", "", f"Accuracy against the true cluster vs noise level t "
                  f"(chance = {1 / max(1, job.spec.partition.k):.2f}):", "",
                  "| " + " | ".join(f"t={t}" for t in acc) + " |", "|" + "---|" * len(acc),
                  "| " + " | ".join(f"{v:.3f}" for v in acc.values()) + " |", ""]
        blind = router.get("accuracy_vs_t_no_class")
        if blind:
            lines += ["The router also sees the class; given the null class instead:", "",
                      "| " + " | ".join(f"t={t}" for t in blind) + " |", "|" + "---|" * len(blind),
                      "| " + " | ".join(f"{v:.3f}" for v in blind.values()) + " |", ""]
        if _copy(run, "router/losses.png", "losses-router.png", pics):
            lines += ["![router loss](losses-router.png)", ""]

    samples = run.manifest("samples")
    if samples:
        lines += ["## Samples", ""]
        per = samples.get("strategies", {})
        if per:
            cols = sorted({c for v in per.values() for c in v if isinstance(v.get(c), (int, float))})
            lines += ["| strategy | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
            lines += [f"| {s} | " + " | ".join(_fmt(v.get(c)) for c in cols) + " |" for s, v in per.items()]
            lines.append("")
        for key in run.list("samples"):
            name = key.split("/", 1)[1]
            if name.endswith(".png") and _copy(run, key, f"samples-{name}", pics):
                lines += [f"### {name[:-4]}", ""]
                gif = f"{name[:-4]}.gif"  # video runs: the animation, then its frame strip
                if _copy(run, f"samples/{gif}", f"samples-{gif}", pics):
                    lines += [f"![{gif}](samples-{gif})", ""]
                lines += [f"![{name}](samples-{name})", ""]
    return "\n".join(lines) + "\n", pics


def write_report(job: JobSpec, run: Store) -> dict:
    text, pics = build_markdown(job, run)
    run.put_bytes("report/index.md", text.encode())
    local = run.local_path("report/index.md")
    return run.commit("report", {"index": "index.md", "pictures": pics,
                                 "path": str(local) if local else run.url("report/index.md")})
