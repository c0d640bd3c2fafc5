"""``atoll sample``: the command's work, kept out of ``atoll/cli.py``.

Bad input (strategy, class, run URI, missing checkpoint) ends with a message and
exit code 1, never a traceback.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import typer

from atoll.progress import console, task
from atoll.sampling.ensemble import Ensemble
from atoll.sampling.errors import SamplingError
from atoll.sampling.export import FolderWriter, npz_bytes
from atoll.store.file import write_atomic
from atoll.sampling.grid import default_scale, grid_png, png_bytes
from atoll.sampling.trace_plot import trace_png
from atoll.store import StoreError


def _labels(ens: Ensemble, class_: str | None, n: int) -> torch.Tensor | None:
    """One class for all ``n`` images, or (no ``--class``) classes 0, 1, ... in turn; None if unconditional."""
    if ens.num_classes == 0:
        if class_ is not None:
            raise SamplingError("this run's experts are unconditional; leave out --class")
        return None
    if class_ is not None:
        return torch.full((n,), ens.class_index(class_), dtype=torch.long)
    return torch.arange(n) % ens.num_classes


#: images sampled per call when writing files (memory of the float work stays bounded; noise depends
#: only on (seed, index), so chunking changes no image)
CHUNK = 512


def sample_command(run: str, *, strategy: str, class_: str | None, n: int, steps: int, sampler: str,
                   guidance: float, seed: int, output: Path | None, nrow: int | None, trace: Path | None,
                   device: str, prompt: str | None = None, step: int | None = None, out_dir: Path | None = None,
                   npz: Path | None = None) -> None:
    try:
        _sample(run, strategy=strategy, class_=class_, n=n, steps=steps, sampler=sampler, guidance=guidance,
                seed=seed, output=output, nrow=nrow, trace=trace, device=device, prompt=prompt, step=step,
                out_dir=out_dir, npz=npz)
    except (SamplingError, StoreError, FileNotFoundError) as e:
        from rich.markup import escape

        console().print(f"[red]error:[/red] {escape(str(e))}")
        raise typer.Exit(1) from None


def _sample(run: str, *, strategy: str, class_: str | None, n: int, steps: int, sampler: str, guidance: float,
            seed: int, output: Path | None, nrow: int | None, trace: Path | None, device: str,
            prompt: str | None = None, step: int | None = None, out_dir: Path | None = None,
            npz: Path | None = None) -> None:
    if n < 1:
        raise SamplingError(f"-n must be >= 1, got {n}")
    if nrow is not None and nrow < 1:
        raise SamplingError(f"--nrow must be >= 1, got {nrow}")
    if output is None and out_dir is None and npz is None:
        output = Path("grid.png")
    from atoll.devices import DeviceError, for_stage

    try:
        placement = for_stage(device)
    except DeviceError as e:
        raise SamplingError(f"--device: {e}") from None
    ens = Ensemble.from_pretrained(run, device=placement.device, step=step)
    ens.check_strategy(strategy)
    if prompt is not None and class_ is not None:
        raise SamplingError("pass --prompt or --class, not both")
    if ens.is_text and prompt is None:
        raise SamplingError("this run is text-conditioned: pass --prompt 'a photo of a sneaker'")
    labels = None if prompt is not None else _labels(ens, class_, n)
    console().print(f"run {ens.source}: {ens.num_experts} expert(s) on {placement}, strategy {strategy}, {n} image(s), "
                    f"{steps} {sampler} steps, guidance {guidance}, seed {seed}")
    batch = 64
    folder = FolderWriter(out_dir, ens.class_names) if out_dir is not None else None
    chunk = CHUNK if folder is not None or npz is not None else n
    parts, first, wall, rows = [], None, 0.0, [0] * ens.num_experts
    with task("sampling", total=steps * math.ceil(n / batch)) as bar:
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            res = ens.sample(hi - lo, class_labels=None if labels is None else labels[lo:hi], strategy=strategy,
                             steps=steps, sampler=sampler, guidance=guidance, seed=seed, start_index=lo,
                             return_trace=trace is not None and lo == 0, batch_size=batch, progress=bar.advance,
                             prompts=prompt)
            first = res if first is None else first
            wall += res.wall_s
            rows = [a + b for a, b in zip(rows, res.expert_rows)]
            if folder is not None:
                folder.add(res.images, res.labels, lo)
            parts.append(res.images)
    images = torch.cat(parts)
    per_image = f"{wall / n * 1000:.1f} ms/image, {first.gflops_per_image:.3f} GFLOPs/image ({strategy})"
    if folder is not None:
        folder.close()
        console().print(f"wrote {n} {'GIF' if ens.is_video else 'PNG'} files and labels.csv to {out_dir}: {per_image}")
    if npz is not None:
        write_atomic(npz, npz_bytes(images, labels, ens.class_names))
        console().print(f"wrote {npz}: arr_0 uint8 {list(images.movedim(1, -1).shape)}"
                        + ("" if labels is None else f", arr_1 labels [{n}]"))
    if output is not None:
        scale = default_scale(ens.output_shape[-1])
        if ens.is_video:   # a frame strip: a row per clip, a column per frame
            from atoll.sampling.video_io import frame_strip

            picture = png_bytes(frame_strip(images.numpy()), scale=scale)
        else:
            picture = grid_png(images, nrow or max(1, math.ceil(math.sqrt(n))), scale=scale)
        write_atomic(output, picture)
        console().print(f"wrote {output}: {per_image}, expert rows {rows}")
    if trace is not None and first.trace is not None:
        pick = list(range(min(4, first.images.shape[0])))
        names = None if first.labels is None else [ens.class_names[int(first.labels[i])] for i in pick]
        shown = first.images[pick][:, :, 0] if ens.is_video else first.images[pick]
        write_atomic(trace, trace_png(first.trace.subset(pick), shown, samples=len(pick), labels=names,
                                      title=f"routing per step ({strategy}, {ens.num_experts} experts)"))
        usage = ", ".join(f"e{k} {u:.0%}" for k, u in enumerate(first.trace.usage()))
        console().print(f"wrote {trace}: expert usage {usage}")
