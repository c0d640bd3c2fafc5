"""Distillation: one dense student DiT trained to match a trained ensemble's velocity (``atoll distill``).

The student's job is a monolith job whose ``experts.distillFrom`` names the teacher run (in the same
store). The student reads the teacher's data (its ``data/`` or ``latents/`` shards; nothing is copied),
draws the same noised samples an expert would (class dropout, t, noise), and regresses the teacher
ensemble's velocity at them (``Ensemble.velocity`` with the spec's ``distill.strategy``, guidance 1:
conditional rows give the conditional velocity, dropped rows the null class's) instead of the data's
flow target ``eps - x0``. Classifier-free guidance then works on the student as on any expert.
"""
from __future__ import annotations

import torch

from atoll.spec.models import JobSpec
from atoll.store import Store
from atoll.train.registry import register
from atoll.train.tasks import ExpertTask


@register("distill-student")
class DistillTask(ExpertTask):
    """The student of ``experts.distillFrom``: its batch is ``experts.training.batchSize`` as written (the
    monolith's k-times batch is already in the student's spec, see ``atoll.distill.student_job``)."""
    kind = "dit"

    def __init__(self, job: JobSpec, k: int):
        super().__init__(job, k)
        self.training = job.spec.experts.training
        self.name = "student"
        self.teacher_name = job.spec.experts.distill_from
        self.strategy = job.spec.distill.strategy
        self._teacher = None

    def load(self, run: Store) -> None:
        """Reads the teacher's data (the student run holds none of its own)."""
        from atoll.run_store import sibling_run

        self.teacher_store = sibling_run(run, self.teacher_name)
        super().load(self.teacher_store)

    def teacher(self, device: torch.device):
        """The teacher ensemble (EMA weights), loaded on first use on the device of the batches."""
        if self._teacher is None:
            from atoll.sampling import Ensemble

            self._teacher = Ensemble.from_pretrained(self.teacher_store, device=device)
            if self._teacher.num_classes != (self.num_classes if self.job.spec.experts.conditioning == "class" else 0):
                raise ValueError(f"{self.name}: the teacher {self.teacher_store.uri} has {self._teacher.num_classes} "
                                 f"classes, the student's data {self.num_classes}; distil a run with its own job spec")
        return self._teacher

    @torch.no_grad()
    def target(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The teacher's velocity at ``(x_t, t, y)`` (``y`` may hold the null class), float32."""
        v, _ = self.teacher(x_t.device).velocity(x_t.float(), t.float(), y, guidance=1.0, strategy=self.strategy)
        return v.float()

    def regression_target(self, x0, eps, x_t, t, cond: dict) -> torch.Tensor:
        """The teacher's velocity instead of ``eps - x0`` (``ExpertTask.loss`` draws everything else)."""
        return self.target(x_t, t, cond.get("y"))
