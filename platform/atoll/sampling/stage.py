"""The ``samples`` pipeline stage: sample grids per strategy and per expert, a routing trace, a manifest.

Writes under ``run/samples/``:

* ``<strategy>.png``   one row per class, ``sample.numPerClass`` images per row;
* ``expert-00k.png``   the same grid from expert k alone (no router);
* video runs: ``<strategy>.gif`` / ``expert-00k.gif`` (animated, the same layout), the same as
  ``.mp4`` (H.264), and the ``.png`` is a frame strip instead (a row per clip, a column per frame);
* ``trace.png``        routing over time for a few samples (top1 if asked for, else the first strategy);
* ``manifest.json``    last: per strategy seconds and GFLOPs per image (and class accuracy
  when ``atoll.eval`` provides a classifier; video: on each clip's object-centred still,
  with the same score of real clips for reference), the files with sizes and hashes.

The grids are independent (a sample's noise depends on its index only): big ones are sampled
in parallel one-thread Ray tasks, one per CPU, the costliest first (``PARALLEL_MIN_IMAGE_STEPS``).
"""
from __future__ import annotations

import os

import torch

from atoll.progress import console, task
from atoll.sampling.ensemble import Ensemble
from atoll.sampling.evaluate import class_accuracy, clip_class_accuracy
from atoll.sampling.grid import default_scale, grid_png, png_bytes
from atoll.sampling.result import SampleResult
from atoll.sampling.trace_plot import trace_png
from atoll.spec import JobSpec
from atoll.store import MANIFEST, S3Config, Store, join
from atoll.store.base import sha256_bytes

PREFIX = "samples"
#: grids of at least this many image-steps (images x sampler steps) are sampled in parallel Ray tasks,
#: one per CPU; smaller ones in process (a task's start-up would cost more than it saves)
PARALLEL_MIN_IMAGE_STEPS = 1000
FORMAT = "atoll-samples/v1"
BATCH = 64


def grid_labels(ens: Ensemble, per_class: int) -> tuple[torch.Tensor | None, int]:
    """Labels of the grid (class c repeated ``per_class`` times, c = 0..C-1) and the row count.

    An unconditional model gets 4 rows of unlabelled samples."""
    if ens.num_classes == 0:
        return None, 4
    return torch.arange(ens.num_classes).repeat_interleave(per_class), ens.num_classes


def trace_rows(labels: torch.Tensor | None, per_class: int, count: int = 4) -> list[int]:
    """A few sample indices for the trace picture: the first sample of the first ``count`` rows."""
    rows = 4 if labels is None else int(labels.numel()) // per_class
    return [r * per_class for r in range(min(count, rows))]


class _Writer:
    """Writes the stage's files and remembers them for the manifest."""

    def __init__(self, run: Store):
        self.run, self.files = run, []

    def put(self, name: str, data: bytes) -> None:
        self.run.put_bytes(join(PREFIX, name), data)
        self.files.append({"name": name, "size": len(data), "sha256": sha256_bytes(data)})


def run_samples(job: JobSpec, run: Store, s3: S3Config | None) -> dict:
    """Samples the run's ensemble with every ``spec.sample`` strategy and each expert alone; returns the manifest."""
    from atoll.devices import for_stage

    ss = job.spec.sample
    placement = for_stage(ss.device)
    ens = Ensemble.from_pretrained(run, s3=s3, device=placement.device)
    for s in ss.strategies:
        ens.check_strategy(s)
    run.delete(join(PREFIX, MANIFEST))  # uncommitted while we write
    labels, rows = grid_labels(ens, ss.num_per_class)
    n = rows * ss.num_per_class
    strategies = list(dict.fromkeys(ss.strategies))
    experts = list(range(ens.num_experts)) if ens.num_experts > 1 else []  # a monolith's expert = its strategies
    kw = dict(steps=ss.steps, sampler=ss.sampler, guidance=ss.guidance, seed=ss.seed, batch_size=BATCH)
    trace_strategy = "top1" if "top1" in strategies else strategies[0]
    scale = default_scale(ens.output_shape[-1])
    out = _Writer(run)

    def pictures(name: str, images: torch.Tensor) -> None:
        if ens.is_video:  # [N, C, T, H, W]: an animated grid + a frame strip
            from atoll.sampling.video_io import frame_strip, gif_bytes, mp4_bytes

            out.put(f"{name}.gif", gif_bytes(images.numpy(), nrow=ss.num_per_class, scale=scale))
            out.put(f"{name}.mp4", mp4_bytes(images.numpy(), nrow=ss.num_per_class, scale=scale))
            out.put(f"{name}.png", png_bytes(frame_strip(images.numpy()), scale=scale))
        else:
            out.put(f"{name}.png", grid_png(images, ss.num_per_class, scale=scale))

    grids = [(s, None, s, s == trace_strategy or ens.num_experts == 1)
             for s in (strategies if ens.num_experts > 1 else strategies[:1])]
    grids += [(f"expert-{k:03d}", k, "top1", False) for k in experts]
    args = [(run.uri, s3, k, n, labels, strat, tr, kw) for _, k, strat, tr in grids]
    if len(grids) > 1 and (os.cpu_count() or 1) > 1 and n * ss.steps >= PARALLEL_MIN_IMAGE_STEPS:
        # each grid in its own one-thread Ray task, as many at once as there are CPUs (the costliest
        # first): two small samplers on two cores beat one on two threads; the grids are independent
        from atoll.data.distributed import map_tasks

        order = sorted(range(len(grids)), key=lambda i: -(ens.check_strategy(grids[i][2]) if grids[i][1] is None
                                                          else 1))
        out_of_order = map_tasks(_one_grid, [args[i] for i in order], desc="samples", num_cpus=1)
        done = [None] * len(grids)
        for i, res in zip(order, out_of_order):
            done[i] = res
    else:
        with task("samples", total=len(grids)) as bar:
            done = []
            for a in args:
                done.append(_one_grid(*a, threads=None, ens=ens))
                bar.advance()
    results: dict[str, SampleResult] = {name: res for (name, *_), res in zip(grids, done)}
    for s in strategies:
        results.setdefault(s, results[strategies[0]])   # one model: every strategy is the same samples
    for name in strategies + [f"expert-{k:03d}" for k in experts]:
        pictures(name, results[name].images)
    if ens.num_experts == 1:
        pictures("expert-000", results[strategies[0]].images)
    traced = results[trace_strategy]
    if traced.trace is not None:
        pick = trace_rows(labels, ss.num_per_class)
        names = None if labels is None else [ens.class_names[int(labels[i])] for i in pick]
        shown = traced.images[pick][:, :, 0] if ens.is_video else traced.images[pick]  # video: first frames
        out.put("trace.png", trace_png(traced.trace.subset(pick), shown, samples=len(pick),
                                       labels=names, title=f"routing per step ({trace_strategy}, "
                                                           f"{ens.num_experts} experts)"))
    manifest = _manifest(job, ens, run, results, strategies, out.files)
    manifest = run.commit(PREFIX, manifest)
    _print(manifest)
    return manifest


def _one_grid(run_uri: str, s3: S3Config | None, expert: int | None, n: int, labels: torch.Tensor | None,
              strategy: str, trace: bool, kw: dict, threads: int | None = 1, ens: Ensemble | None = None) -> SampleResult:
    """One grid of the ensemble (or of expert ``expert`` alone): in a Ray task, on one thread, the ensemble
    loaded from the run; in process, ``ens`` as it is."""
    if threads:
        torch.set_num_threads(threads)
    ens = ens or Ensemble.from_pretrained(run_uri, s3=s3)
    if expert is not None:
        ens = ens.only(expert)
    return ens.sample(n, class_labels=labels, strategy=strategy, return_trace=trace, **kw)


def _entry(run: Store, res: SampleResult) -> dict:
    e = {"seconds_per_image": round(res.seconds_per_image, 5), "gflops_per_image": round(res.gflops_per_image, 4)}
    video = res.images.dim() == 5
    acc = clip_class_accuracy(run, res.images, res.labels) if video else class_accuracy(run, res.images, res.labels)
    if acc is not None:
        e["class_accuracy"] = round(acc, 4)
    if res.trace is not None:
        e["expert_usage"] = [round(u, 4) for u in res.trace.usage()]
    return e


def _manifest(job: JobSpec, ens: Ensemble, run: Store, results: dict[str, SampleResult], strategies: list[str],
              files: list[dict]) -> dict:
    ss = job.spec.sample
    return {
        "format": FORMAT, "num_experts": ens.num_experts, "monolith": ens.num_experts == 1,
        "classes": ens.class_names[: ens.num_classes], "num_per_class": ss.num_per_class, "steps": ss.steps,
        "sampler": ss.sampler, "guidance": ss.guidance, "seed": ss.seed, "device": str(ens.device),
        "strategies": {s: _entry(run, results[s]) for s in strategies},
        "experts": {k: _entry(run, r) for k, r in results.items() if k.startswith("expert-")},
        **({"real_clips_class_accuracy": _real_clips_accuracy(run)} if ens.is_video else {}),
        "files": files,
    }


def _real_clips_accuracy(run: Store, n: int = 1000) -> float | None:
    """The same clip classifier on up to ``n`` real clips of the run's data: the ceiling for the samples'."""
    from atoll.data.readers import load_arrays
    from atoll.data.sources.moving_clips import clips_tensor

    arr = load_arrays(run, "data")
    clips = torch.from_numpy(clips_tensor(arr.images[:n]))
    acc = clip_class_accuracy(run, clips, torch.as_tensor(arr.labels[:n], dtype=torch.long))
    return None if acc is None else round(acc, 4)


def _print(manifest: dict) -> None:
    from rich.table import Table

    t = Table(title="samples")
    for c in ("grid", "s/image", "GFLOPs/image", "class acc."):
        t.add_column(c, justify="right")
    for group in ("strategies", "experts"):
        for name, e in manifest[group].items():
            acc = e.get("class_accuracy")
            t.add_row(name, f"{e['seconds_per_image']:.4f}", f"{e['gflops_per_image']:.3f}",
                      "-" if acc is None else f"{acc:.3f}")
    console().print(t)
    if manifest.get("real_clips_class_accuracy") is not None:
        console().print(f"class acc. of real clips (same still classifier): {manifest['real_clips_class_accuracy']:.3f}")
