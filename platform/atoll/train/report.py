"""What an island tells the world: progress, metrics, a loss curve, its manifest.

Written by rank 0 into the island's folder of the store:
``progress.json`` (step, loss, samples/s, ETA, pid — read by the live display),
``metrics.json`` (the loss history), ``losses.png`` and, last, ``manifest.json``.
"""
from __future__ import annotations

import io
import os
import socket
import time

from atoll.store import Store


def flops_per_sample(task, model_config) -> int:
    """Training FLOPs per sample (forward + backward = 3x forward)."""
    from atoll.models import flops

    fwd = flops.forward_flops(model_config)
    return 3 * int(fwd)


class IslandLog:
    def __init__(self, island: Store, task, world: int, attempt_key: int = 0):
        self.island, self.task, self.world = island, task, world
        self.history: list[dict] = []
        self.t0 = time.time()
        self.start_step = 0
        self.extra: dict = {}
        self.restarts = 0
        prev = island.get_json("progress.json") if island.exists("progress.json") else {}
        self.restarts = int(prev.get("restarts", -1)) + 1 if prev and prev.get("state") != "done" else 0

    def resume(self, step: int) -> None:
        self.start_step = step
        if self.island.exists("metrics.json"):
            self.history = [h for h in self.island.get_json("metrics.json").get("history", []) if h["step"] <= step]

    def _data(self) -> dict:
        """The task's reader metrics (corrupt shards / samples skipped, bytes read, time waited on data)."""
        stats = getattr(self.task, "data_stats", None)
        return stats() if callable(stats) else {}

    def _progress(self, state: str, step: int, loss: float | None, sps: float | None) -> None:
        total = self.task.training.steps
        elapsed = time.time() - self.t0
        done_here = max(1, step - self.start_step)
        eta = (total - step) * elapsed / done_here if step > self.start_step else None
        self.island.put_json("progress.json", {
            "name": self.task.name, "state": state, "step": step, "total": total, "loss": loss,
            "samples_per_s": sps, "eta_s": eta, "elapsed_s": elapsed, "pid": os.getpid(),
            "host": socket.gethostname(), "world_size": self.world, "restarts": self.restarts,
            "data": self._data(), "updated": time.time()})

    def step(self, step: int, loss: float, sps: float, lr: float) -> None:
        self.history.append({"step": step, "loss": loss, "samples_per_s": sps, "lr": lr,
                             "time": time.time() - self.t0})
        self._progress("training", step, loss, sps)
        self.island.put_json("metrics.json", {"name": self.task.name, "history": self.history})

    def checkpoint(self, step: int) -> None:
        last = self.history[-1] if self.history else {}
        self._progress("training", step, last.get("loss"), last.get("samples_per_s"))

    def finish(self, model_config) -> dict:
        tr = self.task.training
        fps = flops_per_sample(self.task, model_config)
        sps = [h["samples_per_s"] for h in self.history if h["step"] > self.start_step]
        manifest = {
            "kind": self.task.kind, "name": self.task.name, "steps": tr.steps, "batch_size": tr.batch_size,
            "num_samples": self.task.num_samples(), "world_size": self.world,
            "train_flops_per_sample": fps, "train_flops": fps * tr.batch_size * tr.steps,
            "final_loss": self.history[-1]["loss"] if self.history else None,
            "samples_per_s": sum(sps) / len(sps) if sps else None,
            "wall_s_last_attempt": time.time() - self.t0, "restarts": self.restarts,
            "resumed_from_step": self.start_step, "model": "model", "data": self._data(), **self.extra,
        }
        self.island.put_bytes("losses.png", loss_png(self.history, self.task.name))
        self._progress("done", tr.steps, manifest["final_loss"], manifest["samples_per_s"])
        self.island.commit("", manifest)
        return manifest


def loss_png(history: list[dict], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    if history:
        ax.plot([h["step"] for h in history], [h["loss"] for h in history], lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
