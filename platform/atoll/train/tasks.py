"""What an island trains: an expert (flow-matching DiT) or the router (classifier).

A task knows its data, its model and its loss; the loop in ``loop.py`` knows nothing
else. Data is streamed from the run's shard artifacts (``atoll.data.loader``; or held
in memory with ``data.loader.mode: memory``): the samples of step ``s`` on rank ``r``
are a pure function of (seed, s, r) for a given world size, so a resumed run sees
exactly the batches the interrupted one would have. Task kinds are looked up in
``atoll.train.registry`` (``make_task``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from atoll.models.flow import interpolate, sample_t
from atoll.spec.models import JobSpec, TrainingSpec
from atoll.store import Store
from atoll.train.registry import make_task, register

__all__ = ["Batch", "ExpertTask", "RouterTask", "Task", "make_task", "router_accuracy"]


def expert_dir(k: int) -> str:
    return f"experts/{k:03d}"


def partition_dir(k: int) -> str:
    return f"partition/expert-{k:03d}"


def to_unit(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A batch's payload as the model's input: uint8 images [0, 255] -> float [-1, 1]; float payloads as they are."""
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    return t.float() / 127.5 - 1.0 if t.dtype == torch.uint8 else t.float()


@dataclass
class Batch:
    x0: torch.Tensor
    y: torch.Tensor                      # the training target's labels (classes or clusters)
    c: torch.Tensor | None = None        # router only: the samples' classes (its conditioning)
    text: torch.Tensor | None = None     # text experts: caption states [b, L, D] and mask [b, L]
    text_mask: torch.Tensor | None = None


class Task:
    name: str
    training: TrainingSpec
    kind: str  # "dit" | "router"
    job: JobSpec

    def prefixes(self) -> list[str]: ...
    def build_model(self) -> torch.nn.Module: ...
    def loss(self, model, batch: Batch, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor: ...
    def make_batch(self, part, device) -> Batch: ...

    def load(self, run: Store) -> None:
        """Opens the task's shard artifacts (manifests only; ``loader.mode: memory`` decodes them all)."""
        from atoll.data.collection import Collection
        from atoll.data.loader import MemoryData

        data = self.job.spec.data
        self.run, self.opts = run, data.loader
        self.col = Collection(run, self.prefixes(), on_corrupt=data.on_corrupt)
        if self.col.n == 0:
            from atoll.data.errors import DataError

            raise DataError(f"{self.name}: {', '.join(run.url(p) for p in self.prefixes())} hold no samples; "
                            "lower partition.k (or fix the data) so that every expert gets some")
        self.memory = MemoryData(self.col) if self.opts.mode == "memory" else None
        self.sample_shape = first_shape(self.col)
        self._loaders: dict[tuple[int, int, int], object] = {}
        m = run.manifest("data") or {}
        self.num_classes = int(m.get("num_classes") or self.col.artifact_meta("num_classes", 0) or 0)
        lat = run.manifest("latents") if self.job.spec.latents.enabled else None
        if self.job.spec.latents.enabled and lat is None:
            from atoll.data.errors import DataError

            raise DataError(f"{self.name}: latents.enabled but {run.url('latents')} is not committed; run the "
                            "encode stage (`atoll run`, or `--from encode`)")
        #: latent space: (scaling_factor, shift_factor) of the VAE; the model sees (z - shift) * scale
        self.latent_scaling = (lat["vae"]["scaling_factor"], lat["vae"]["shift_factor"]) if lat else None
        #: the stored latents are the VAE's mean and log-variance (latents.posterior: sample)
        self.latent_moments = bool(lat and lat.get("moments"))

    def num_samples(self) -> int:
        return self.col.n

    def loader(self, rank: int, world: int, seed: int | None = None, prefetch: int | None = None):
        """The loader of rank ``rank`` of ``world`` (one per schedule, kept open)."""
        from atoll.data.loader import open_loader
        from atoll.data.schedule import Schedule

        seed = self.training.seed if seed is None else seed
        key = (rank, world, seed)
        if key not in self._loaders:
            o = self.opts
            sch = Schedule(self.col.n, seed, rank, world, chunk=o.chunk_size, window=o.shuffle_window)
            self._loaders[key] = open_loader(self.col, sch, o.mode, memory=self.memory, threads=o.read_threads,
                                             prefetch=o.prefetch if prefetch is None else prefetch)
        return self._loaders[key]

    def batch(self, step: int, micro: int, rank: int, world: int, accum_i: int, accum: int, device) -> Batch:
        """Micro-batch ``accum_i`` of ``accum`` of step ``step`` on rank ``rank`` of ``world``: positions
        ``(step * accum + accum_i) * per ...`` of the rank's schedule, ``per = batchSize / (world * accum)``."""
        per = self.training.batch_size // (world * accum)
        start = (step * accum + accum_i) * per
        return self.make_batch(self.loader(rank, world).batch(start, start + per), device)

    def data_stats(self) -> dict:
        """What the readers did (corrupt shards skipped, samples skipped, bytes read, time waited) and
        the process's peak RSS."""
        out = {"samples": self.col.n, "mode": self.opts.mode, "corrupt_shard_names": list(self.col.stats["corrupt_shards"])}
        for ld in self._loaders.values():
            for k, v in ld.stats().items():
                if isinstance(v, (int, float)):
                    out[k] = out.get(k, 0) + v
        out.update(corrupt_shards=len(out["corrupt_shard_names"]), skipped_samples=self.col.stats["skipped_samples"],
                   bytes_read=self.col.stats["bytes_read"], reads=self.col.stats["reads"],
                   process_peak_rss_mb=round(peak_rss_mb(), 1))
        return out

    def x0(self, x: np.ndarray) -> torch.Tensor:
        return self.stored(to_unit(x))

    def stored(self, x: torch.Tensor) -> torch.Tensor:
        """A batch's payload as ``Batch.x0``: scaled latents, or stored moments left for ``posterior``."""
        return x if getattr(self, "latent_moments", False) else self.scaled(x)

    def posterior(self, x0: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """The training sample of a batch's ``x0``: as it is, or (``latents.posterior: sample``, where ``x0``
        holds the unscaled mean and log-variance) ``z = mean + exp(logvar / 2) * eps`` drawn with ``gen``
        (``None``: the mean), scaled like the mean latents."""
        if not getattr(self, "latent_moments", False):
            return x0
        mean, logvar = x0.chunk(2, dim=1)
        if gen is None:
            return self.scaled(mean)
        eps = torch.randn(mean.shape, generator=gen).to(mean.device)
        return self.scaled(mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * eps)

    def scaled(self, x: torch.Tensor) -> torch.Tensor:
        """Latents in the model's space, ``(z - shift_factor) * scaling_factor``; images as they are."""
        if getattr(self, "latent_scaling", None) is None:
            return x
        scale, shift = self.latent_scaling
        return (x - shift) * scale


def peak_rss_mb() -> float:
    """This process's peak resident memory (what the data readers must keep flat in the dataset size)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def first_shape(col) -> tuple[int, ...]:
    """The stored payload's shape (the manifest's ``image_shape``, else the first readable sample's)."""
    from atoll.data.records import model_array

    shape = col.artifact_meta("image_shape")
    if shape:
        return tuple(int(v) for v in shape)
    for s in range(len(col.shards)):
        if col.shards[s][2]["count"]:
            raw = col.rows(s, 0, 1)[0]
            if raw is not None:
                return tuple(model_array(raw)[0].shape)
    raise ValueError(f"no readable sample in {', '.join(col.store.url(p) for p in col.prefixes)}")


@register("image-expert")
class ExpertTask(Task):
    """Rectified-flow training of expert ``k`` (or the monolith) on its own shards."""
    kind = "dit"

    def __init__(self, job: JobSpec, k: int):
        self.job, self.k = job, k
        self.training = job.spec.experts.training
        if job.spec.experts.mode == "monolith":
            # the monolith sees all data with the ensemble's combined batch
            t = self.training
            self.training = t.model_copy(update={"batch_size": t.batch_size * job.spec.partition.k})
        self.name = f"expert-{k:03d}"
        self.text = None

    @property
    def data_prefix(self) -> str:
        if self.job.spec.experts.mode == "monolith":
            return "latents" if self.job.spec.latents.enabled else "data"
        return partition_dir(self.k)

    def prefixes(self) -> list[str]:
        return [self.data_prefix]

    def load(self, run: Store) -> None:
        super().load(run)
        if self.job.spec.experts.conditioning == "text":
            from atoll.train.captions import CaptionStates

            self.text = CaptionStates()

    def make_batch(self, part, device) -> Batch:
        y = torch.from_numpy(part.label)
        b = Batch(self.x0(part.x).to(device), y.to(device))
        if self.text is not None:
            if part.captions is None:
                raise ValueError(f"{self.name}: experts.conditioning is 'text' but the data has no captions; use "
                                 "conditioning: class, or a source with captions (image-folder with .txt files)")
            states, mask = self.text.states(part.captions)
            b.text, b.text_mask = states.to(device), mask.to(device)
        return b

    def model_config(self):
        from atoll.models.dit import DiTConfig

        c, h, _ = self.sample_shape
        ex = self.job.spec.experts
        text = ex.conditioning == "text"
        return DiTConfig(size=ex.model, input_size=h, in_channels=c,
                         num_classes=self.num_classes if ex.conditioning == "class" else 0,
                         text_dim=384 if text else None, text_mode=ex.text_mode)

    def build_model(self) -> torch.nn.Module:
        return self.model_config().build()

    def loss(self, model, batch: Batch, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
        x0, y = self.posterior(batch.x0, gen), batch.y
        n = x0.shape[0]
        cond = self.job.spec.experts.conditioning
        drop = (torch.rand(n, generator=gen) < self.training.class_dropout).to(y.device)
        kw = {}
        if cond == "class":  # dropped labels become the null class (classifier-free guidance)
            kw["y"] = torch.where(drop, torch.full_like(y, self.num_classes), y)
        elif cond == "text":  # dropped captions get an all-False mask: the null text
            kw["text"] = batch.text.to(x0.device, dtype)
            kw["text_mask"] = batch.text_mask.to(x0.device) & ~drop[:, None]
        t = sample_t(n, kind=self.training.timesteps, generator=gen).to(x0.device)
        eps = torch.randn(x0.shape, generator=gen).to(x0.device)
        x_t = interpolate(x0, eps, t)
        v = model(x_t.to(dtype), t.to(dtype), **kw)  # images or clips
        return F.mse_loss(v.float(), self.regression_target(x0, eps, x_t, t, kw))

    def regression_target(self, x0, eps, x_t, t, cond: dict) -> torch.Tensor:
        """What the model's velocity regresses: the flow target ``eps - x0`` (a distilled student overrides
        it with its teacher's velocity at the same ``x_t``, ``t`` and conditioning)."""
        return eps - x0


@register("router")
class RouterTask(Task):
    """Cross-entropy of the router on noised samples of all partitions and their cluster ids.

    Its data is the experts' shard artifacts read as one collection: each shuffle window
    draws chunks from all partitions at random, so the mix follows the partition sizes
    without holding any partition.
    """
    kind = "router"

    def __init__(self, job: JobSpec):
        self.job = job
        self.training = job.spec.router.training
        self.name = "router"

    @property
    def expert_ids(self) -> list[int]:
        """The experts the router chooses between, in output order (``router.experts``, set when an ensemble
        grows; else 0..k-1). Output ``i`` is trained on ``partition/expert-<expert_ids[i]>``."""
        ids = self.job.spec.router.experts
        return list(ids) if ids is not None else list(range(self.job.spec.partition.k))

    def prefixes(self) -> list[str]:
        return [partition_dir(k) for k in self.expert_ids]

    def load(self, run: Store) -> None:
        super().load(run)
        if not self.job.spec.router.sees_class(self.job.spec.experts):
            self.num_classes = 0  # route on the class too (p(k | x_t, y)) only where router.conditioning says so
        self.start = None
        if (init := self.job.spec.router.init) is not None:  # fine-tuning: the old router, its head rows kept
            from atoll.models.checkpoint import from_pretrained

            self.start = (from_pretrained(run, init.checkpoint), list(init.experts))

    @property
    def classes(self) -> bool | None:
        """True when the router is given the samples' classes (``loop._finish`` checks ``is not None``
        to also report the accuracy without them); None otherwise."""
        return True if self.num_classes else None

    def x0(self, x: np.ndarray) -> torch.Tensor:
        if self.job.spec.is_video:  # stored frame strips -> clips [N, C, T, H, W]; the router sees frame means
            from atoll.data.sources.moving_clips import clips_tensor

            x = clips_tensor(x)
        return self.stored(to_unit(x))

    def make_batch(self, part, device) -> Batch:
        c = torch.from_numpy(part.label).to(device) if self.num_classes else None
        return Batch(self.x0(part.x).to(device), torch.from_numpy(part.artifact).to(device), c)

    def model_config(self):
        from atoll.models.router import RouterConfig

        c, w = self.sample_shape[0], self.sample_shape[-1]  # [C, H, W], or clips [C, T*H, W]: frames are W square
        return RouterConfig(size=self.job.spec.router.model, input_size=w, in_channels=c,
                            num_experts=len(self.expert_ids), num_classes=self.num_classes)

    def build_model(self) -> torch.nn.Module:
        if getattr(self, "start", None) is None:
            return self.model_config().build()
        from dataclasses import replace

        from atoll.models.router import with_heads

        old, old_ids = self.start
        if old.config != replace(self.model_config(), num_experts=old.config.num_experts):
            raise ValueError(f"router.init.checkpoint {self.job.spec.router.init.checkpoint} is a {old.config}, "
                             f"not this job's router ({self.model_config()}); start from a router of the same size")
        rows = [old_ids.index(k) if k in old_ids else None for k in self.expert_ids]
        return with_heads(old, rows, seed=self.training.seed).train()

    def loss(self, model, batch: Batch, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
        x_t, t = noised(self.posterior(batch.x0, gen), gen)
        kw = {}
        if batch.c is not None:  # classes dropped to the null class so unconditional routing works too
            drop = (torch.rand(len(batch.c), generator=gen) < self.training.class_dropout).to(batch.c.device)
            kw["y"] = torch.where(drop, torch.full_like(batch.c, self.num_classes), batch.c)
        logits = model(x_t.to(dtype), t.to(dtype), **kw)
        return F.cross_entropy(logits.float(), batch.y)


def noised(x0: torch.Tensor, gen: torch.Generator, t: torch.Tensor | None = None):
    """``x_t = (1 - t) x0 + t eps`` with t ~ U(0, 1) unless given."""
    n = x0.shape[0]
    if t is None:
        t = torch.rand(n, generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    t = t.to(x0.device)
    return interpolate(x0, eps.to(x0.device), t), t


@torch.no_grad()
def router_accuracy(model, task: RouterTask, ts=(0.0, 0.25, 0.5, 0.75, 0.9, 1.0), n: int = 1024,
                    dtype=torch.float32, device="cpu", seed: int = 1234, with_class: bool = True) -> dict[str, float]:
    """Router top-1 accuracy against the true cluster at fixed noise levels t.

    The eval set is the first ``n`` samples of a schedule of its own (``seed``, one rank), read
    like training data. A class-conditional router is given the samples' classes (``with_class``)
    or the null class. Without the class, accuracy falls to about chance as t -> 1.
    """
    g = torch.Generator().manual_seed(seed)
    m = min(n, task.num_samples())
    part = task.loader(0, 1, seed=seed, prefetch=0).batch(0, m)
    batch = task.make_batch(part, device)
    x0, y = task.posterior(batch.x0, None), batch.y  # latent moments: evaluated on the means
    kw = {"y": batch.c} if with_class and batch.c is not None else {}
    out = {}
    for t in ts:
        x_t, tt = noised(x0, g, torch.full((m,), float(t)))
        pred = model(x_t.to(dtype), tt.to(dtype), **kw).argmax(-1)
        out[f"{t:g}"] = float((pred == y).float().mean())
    return out
