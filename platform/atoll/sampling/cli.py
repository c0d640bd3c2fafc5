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
from atoll.sampling.grid import default_scale, grid_png
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


def sample_command(run: str, *, strategy: str, class_: str | None, n: int, steps: int, sampler: str,
                   guidance: float, seed: int, output: Path, nrow: int | None, trace: Path | None,
                   device: str, prompt: str | None = None, step: int | None = None) -> None:
    try:
        _sample(run, strategy=strategy, class_=class_, n=n, steps=steps, sampler=sampler, guidance=guidance,
                seed=seed, output=output, nrow=nrow, trace=trace, device=device, prompt=prompt, step=step)
    except (SamplingError, StoreError, FileNotFoundError) as e:
        console().print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None


def _sample(run: str, *, strategy: str, class_: str | None, n: int, steps: int, sampler: str, guidance: float,
            seed: int, output: Path, nrow: int | None, trace: Path | None, device: str,
            prompt: str | None = None, step: int | None = None) -> None:
    if n < 1:
        raise SamplingError(f"-n must be >= 1, got {n}")
    if nrow is not None and nrow < 1:
        raise SamplingError(f"--nrow must be >= 1, got {nrow}")
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
    with task("sampling", total=steps * math.ceil(n / batch)) as bar:
        res = ens.sample(n, class_labels=labels, strategy=strategy, steps=steps, sampler=sampler, guidance=guidance,
                         seed=seed, return_trace=trace is not None, batch_size=batch, progress=bar.advance,
                         prompts=prompt)
    scale = default_scale(ens.image_shape[1])
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(grid_png(res.images, nrow or max(1, math.ceil(math.sqrt(n))), scale=scale))
    console().print(f"wrote {output}: {res.seconds_per_image * 1000:.1f} ms/image, "
                    f"{res.gflops_per_image:.3f} GFLOPs/image ({strategy}), expert rows {res.expert_rows}")
    if trace is not None and res.trace is not None:
        pick = list(range(min(4, n)))
        names = None if res.labels is None else [ens.class_names[int(res.labels[i])] for i in pick]
        trace.parent.mkdir(parents=True, exist_ok=True)
        trace.write_bytes(trace_png(res.trace.subset(pick), res.images[pick], samples=len(pick), labels=names,
                                    title=f"routing per step ({strategy}, {ens.num_experts} experts)"))
        usage = ", ".join(f"e{k} {u:.0%}" for k, u in enumerate(res.trace.usage()))
        console().print(f"wrote {trace}: expert usage {usage}")
