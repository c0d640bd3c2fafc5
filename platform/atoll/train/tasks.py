"""What an island trains: an expert (flow-matching DiT) or the router (classifier).

A task knows its data, its model and its loss; the loop in ``loop.py`` knows
nothing else. Batches are drawn from in-memory arrays with indices that depend
only on (seed, step, rank), so a resumed run sees exactly the batches the
interrupted one would have.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from atoll.models.flow import interpolate, sample_t
from atoll.spec.models import JobSpec, TrainingSpec
from atoll.store import Store


def expert_dir(k: int) -> str:
    return f"experts/{k:03d}"


def partition_dir(k: int) -> str:
    return f"partition/expert-{k:03d}"


def batch_indices(n: int, step: int, batch: int, seed: int) -> torch.Tensor:
    """The global batch of optimizer step ``step``: epoch-wise permutations of range(n)."""
    start = step * batch
    out = []
    while len(out) < batch:
        epoch, off = divmod(start + len(out), n)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=g)
        out.extend(perm[off: off + batch - len(out)].tolist())
    return torch.tensor(out, dtype=torch.long)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float() / 127.5 - 1.0


@dataclass
class Batch:
    x0: torch.Tensor
    y: torch.Tensor                      # the training target's labels (classes, captions or clusters)
    c: torch.Tensor | None = None        # router only: the samples' classes (its conditioning)


class Task:
    name: str
    training: TrainingSpec
    kind: str  # "dit" | "router"

    def load(self, run: Store) -> None: ...
    def build_model(self) -> torch.nn.Module: ...
    def loss(self, model, batch: Batch, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor: ...

    def num_samples(self) -> int:
        return len(self.images)

    def batch(self, step: int, micro: int, rank: int, world: int, accum_i: int, accum: int, device) -> Batch:
        idx = batch_indices(len(self.images), step, self.training.batch_size, self.training.seed)
        per = self.training.batch_size // (world * accum)
        lo = (accum_i * world + rank) * per
        sel = idx[lo: lo + per]
        classes = getattr(self, "classes", None)
        return Batch(to_unit(self.images[sel]).to(device), self.labels[sel].to(device),
                     None if classes is None else classes[sel].to(device))


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

    @property
    def data_prefix(self) -> str:
        return "data" if self.job.spec.experts.mode == "monolith" else partition_dir(self.k)

    def load(self, run: Store) -> None:
        from atoll.data.readers import load_arrays

        arr = load_arrays(run, self.data_prefix)
        self.images = torch.from_numpy(np.ascontiguousarray(arr.images))
        self.labels = torch.from_numpy(np.asarray(arr.labels, dtype=np.int64))
        data = run.manifest("data") or {}
        self.num_classes = int(data.get("num_classes") or (int(self.labels.max()) + 1 if len(self.labels) else 0))
        if self.job.spec.experts.conditioning == "text":
            self._load_text(arr.captions)

    def _load_text(self, captions) -> None:
        """Encodes the distinct captions once; a batch indexes into the table."""
        from atoll.models.text import TextEncoder

        if not captions or not any(captions):
            raise ValueError(f"{self.name}: experts.conditioning is 'text' but the data has no captions; use "
                             "conditioning: class, or a source with captions (image-folder with .txt files)")
        states, mask, index = TextEncoder().encode_unique(list(captions))
        self.text_states, self.text_mask, self.labels = states, mask, index  # labels now index the table

    def model_config(self):
        from atoll.models.dit import DiTConfig

        _, c, h, _ = self.images.shape
        ex = self.job.spec.experts
        text = ex.conditioning == "text"
        return DiTConfig(size=ex.model, input_size=h, in_channels=c,
                         num_classes=self.num_classes if ex.conditioning == "class" else 0,
                         text_dim=384 if text else None, text_mode=ex.text_mode)

    def build_model(self) -> torch.nn.Module:
        return self.model_config().build()

    def loss(self, model, batch: Batch, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
        x0, y = batch.x0, batch.y
        n = x0.shape[0]
        cond = self.job.spec.experts.conditioning
        drop = (torch.rand(n, generator=gen) < self.training.class_dropout).to(y.device)
        kw = {}
        if cond == "class":  # dropped labels become the null class (classifier-free guidance)
            kw["y"] = torch.where(drop, torch.full_like(y, self.num_classes), y)
        elif cond == "text":  # dropped captions get an all-False mask: the null text
            kw["text"] = self.text_states[y].to(x0.device, dtype)
            kw["text_mask"] = self.text_mask[y].to(x0.device) & ~drop[:, None]
        t = sample_t(n, kind=self.training.timesteps, generator=gen).to(x0.device)
        eps = torch.randn(x0.shape, generator=gen).to(x0.device)
        v = model(interpolate(x0, eps, t).to(dtype), t.to(dtype), **kw)  # images or clips
        return F.mse_loss(v.float(), eps - x0)


class RouterTask(Task):
    """Cross-entropy of the router on noised samples of all partitions and their cluster ids."""
    kind = "router"

    def __init__(self, job: JobSpec):
        self.job = job
        self.training = job.spec.router.training
        self.name = "router"

    def load(self, run: Store) -> None:
        from atoll.data.readers import load_arrays

        imgs, labels, classes = [], [], []
        for k in range(self.job.spec.partition.k):
            arr = load_arrays(run, partition_dir(k))
            imgs.append(torch.from_numpy(np.ascontiguousarray(arr.images)))
            labels.append(torch.full((len(arr.images),), k, dtype=torch.long))
            classes.append(torch.from_numpy(np.asarray(arr.labels, dtype=np.int64)))
        self.images, self.labels = torch.cat(imgs), torch.cat(labels)
        if self.job.spec.is_video:  # stored frame strips -> clips [N, C, T, H, W]; the router sees frame means
            from atoll.data.sources.moving_clips import clips_tensor

            self.images = torch.from_numpy(clips_tensor(self.images.numpy()))
        self.num_classes = 0
        if self.job.spec.router.sees_class(self.job.spec.experts):  # route on the class too: p(k | x_t, y)
            data = run.manifest("data") or {}
            self.classes = torch.cat(classes)
            self.num_classes = int(data.get("num_classes") or int(self.classes.max()) + 1)

    def model_config(self):
        from atoll.models.router import RouterConfig

        c, h = self.images.shape[1], self.images.shape[-1]  # images [N, C, H, W] or clips [N, C, T, H, W]
        return RouterConfig(size=self.job.spec.router.model, input_size=h, in_channels=c,
                            num_experts=self.job.spec.partition.k, num_classes=self.num_classes)

    def build_model(self) -> torch.nn.Module:
        return self.model_config().build()

    def loss(self, model, batch: Batch, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
        x_t, t = noised(batch.x0, gen)
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

    A class-conditional router is given the samples' classes (``with_class``) or the null class.
    Without the class, accuracy falls to about chance as t -> 1 (pure noise says nothing).
    """
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(task.images), generator=g)[:n]
    x0, y = to_unit(task.images[idx]).to(device), task.labels[idx].to(device)
    classes = getattr(task, "classes", None) if with_class else None
    kw = {} if classes is None else {"y": classes[idx].to(device)}
    out = {}
    for t in ts:
        x_t, tt = noised(x0, g, torch.full((len(idx),), float(t)))
        pred = model(x_t.to(dtype), tt.to(dtype), **kw).argmax(-1)
        out[f"{t:g}"] = float((pred == y).float().mean())
    return out


def make_task(job: JobSpec, role: str, expert: int | None) -> Task:
    if role == "router":
        return RouterTask(job)
    if expert is None:
        raise ValueError("an expert task needs the expert id")
    from atoll.train.video_task import VideoExpertTask, is_video_model  # video experts: see video_task.py

    if is_video_model(job.spec.experts.model):
        return VideoExpertTask(job, expert)
    return ExpertTask(job, expert)
