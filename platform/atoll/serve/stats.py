"""The scheduler's own counters: how big the batches it forms really are."""
from __future__ import annotations


class Counters:
    """Ticks, rows per tick, and per expert: forward passes, request rows, forward rows (CFG rows twice)."""

    def __init__(self, num_experts: int):
        self.ticks = self.tick_rows = self.max_tick_rows = self.router_rows = 0
        self.forwards = [0] * num_experts
        self.rows = [0] * num_experts
        self.forward_rows = [0] * num_experts
        self.done = self.failed = self.cancelled = 0
        self.expert_retries = 0  # distributed mode: expert calls retried on another replica

    def tick(self, rows: int, batches: dict) -> None:
        """One tick over ``rows`` rows whose expert batches were ``batches`` (``{k: ExpertBatch}``)."""
        self.ticks += 1
        self.tick_rows += rows
        self.max_tick_rows = max(self.max_tick_rows, rows)
        for k, b in batches.items():
            self.forwards[k] += 1
            self.rows[k] += b.rows
            self.forward_rows[k] += b.forward_rows

    def summary(self) -> dict:
        forwards = sum(self.forwards)
        return {"ticks": self.ticks,
                "mean_rows_per_tick": round(self.tick_rows / self.ticks, 4) if self.ticks else 0.0,
                "max_rows_per_tick": self.max_tick_rows,
                "expert_forwards": forwards,
                "mean_rows_per_expert_forward": round(sum(self.rows) / forwards, 4) if forwards else 0.0,
                "expert_forwards_per_expert": list(self.forwards), "expert_rows": list(self.rows),
                "expert_forward_rows": list(self.forward_rows), "router_rows": self.router_rows, "expert_retries": self.expert_retries,
                "requests": {"done": self.done, "failed": self.failed, "cancelled": self.cancelled}}
