"""One function per pipeline stage: ``stage(job, run, s3) -> summary dict``.

Each delegates to the package that owns the work and prints a short summary.
"""
from __future__ import annotations

from rich.table import Table

from atoll.progress import console
from atoll.spec import JobSpec
from atoll.store import S3Config, Store


def data(job: JobSpec, run: Store, s3: S3Config | None) -> dict:
    from atoll.data.stage import run_data

    return run_data(job, run)


def encode(job: JobSpec, run: Store, s3: S3Config | None) -> dict:
    from atoll.data.encode import run_encode

    m = run_encode(job, run)
    v = m["vae"]
    console().print(f"encode: {m['count']} latents {'x'.join(map(str, m['image_shape']))} with the VAE {v['path']} "
                    f"(sha256 {v['sha256'][:12]}, scaling {v['scaling_factor']:g}, shift {v['shift_factor']:g})")
    return {"count": m["count"], "latent_shape": m["image_shape"], "vae_sha256": v["sha256"]}


def partition(job: JobSpec, run: Store, s3: S3Config | None) -> dict:
    from atoll.data.partition import run_partition

    return run_partition(job, run)


def _train(job: JobSpec, run: Store, s3: S3Config | None, units, fillers=None) -> dict:
    from atoll.islands.local import IslandsFailed, run_units

    if job.spec.islands.target != "local":
        raise RuntimeError(f"islands.target is {job.spec.islands.target!r}: use `atoll submit` for remote islands")
    out = run_units(job, run, s3, units, fillers=fillers)
    if out.failed:
        raise IslandsFailed(out.failed)
    return {"trained": out.done, "skipped": out.skipped, "wall_s": out.wall_s}


def experts(job: JobSpec, run: Store, s3: S3Config | None) -> dict:
    """Trains every expert; the router (which needs only the partition) trains
    alongside them as one more island, so all islands start in one wave."""
    from atoll.islands.plan import expert_units, router_unit

    units = expert_units(job)
    if job.spec.experts.mode != "monolith" and job.spec.islands.target == "local":
        units = units + [router_unit()]
    info = _train(job, run, s3, units, fillers=_eval_classifier_filler(run))
    rows = [run.manifest(u.prefix) for u in expert_units(job)]
    t = Table(title="experts")
    for c in ("expert", "samples", "steps", "final loss", "samples/s", "train PFLOP"):
        t.add_column(c, justify="right")
    total = 0
    for m in rows:
        total += m["train_flops"]
        t.add_row(m["name"], str(m["num_samples"]), str(m["steps"]), f"{m['final_loss']:.4f}",
                  f"{m['samples_per_s'] or 0:.0f}", f"{m['train_flops'] / 1e15:.3f}")
    console().print(t)
    console().print(f"total training FLOPs: {total:.3e}")
    info["train_flops_total"] = total
    return info


def _warm_eval_classifier() -> None:
    """Trains the samples stage's reference classifier into its cache, on one thread (a filler task)."""
    import functools

    import torch

    from atoll.eval.cache import DEFAULT_KEY, get_classifier
    from atoll.eval.reference import train_fashion_mnist

    torch.set_num_threads(1)
    get_classifier(None, DEFAULT_KEY, train_fn=functools.partial(train_fashion_mnist, threads=1))


def _eval_classifier_filler(run: Store) -> list:
    """The samples stage scores Fashion-MNIST samples with a classifier trained on first use (minutes on a
    CPU): when it is not cached yet, train it on a CPU the islands' last wave leaves idle."""
    from atoll.islands.local import Filler

    data = run.manifest("data") or {}
    names = [n.lower() for n in data.get("class_names") or []]
    if not ("sneaker" in names and "ankle boot" in names):
        return []
    from atoll.eval.cache import DEFAULT_KEY, cache_store, load_classifier

    try:
        if load_classifier(cache_store(), DEFAULT_KEY) is not None:
            return []
    except Exception:  # noqa: BLE001 - a corrupt cache: the samples stage explains it
        return []
    return [Filler("the evaluation classifier", _warm_eval_classifier)]


def router(job: JobSpec, run: Store, s3: S3Config | None) -> dict:
    from atoll.islands.plan import router_unit

    info = _train(job, run, s3, [router_unit()])
    m = run.manifest("router")
    acc = m.get("accuracy_vs_t", {})
    blind = m.get("accuracy_vs_t_no_class")
    t = Table(title=f"router accuracy vs t (chance = {1 / job.spec.partition.k:.2f})")
    t.add_column("router input")
    for k in acc:
        t.add_column(f"t={k}", justify="right")
    t.add_row("x_t, t, class" if blind else "x_t, t", *[f"{v:.3f}" for v in acc.values()])
    if blind:
        t.add_row("x_t, t (null class)", *[f"{v:.3f}" for v in blind.values()])
    console().print(t)
    info["accuracy_vs_t"] = acc
    return info


def samples(job: JobSpec, run: Store, s3: S3Config | None) -> dict:
    from atoll.sampling.stage import run_samples

    return run_samples(job, run, s3)


def report(job: JobSpec, run: Store, s3: S3Config | None) -> dict:
    from atoll.report import write_report

    return write_report(job, run)
