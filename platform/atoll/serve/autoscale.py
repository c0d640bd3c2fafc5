"""Expert deployments scaled by the rows the router sends them (``serve.experts.scaleOn: rows``).

In distributed mode the router decides, per row and per denoising step, which expert computes it,
so each expert's load is exactly the rows it is sent. Every expert replica measures the rows it
computed per second (``RowMeter``) and reports it to Serve as a custom autoscaling metric
(``record_autoscaling_stats``); Serve's controller runs ``RowsPolicy`` per expert deployment:

    replicas = ceil(rows per second, summed over its replicas / targetRowsPerS)

Serve then applies ``minReplicas`` / ``maxReplicas`` and the delays: ``upscaleDelayS`` before adding
replicas, ``idleS`` before removing them and before going to zero. With ``minReplicas: 0`` an
expert nobody is routed to scales to zero; the next row routed to it is a **cold start**: the call
waits in Serve's queue, Serve starts a replica at once (its cold-start path), and the scheduler
waits for it up to ``cold_start_timeout_s`` instead of rerouting the rows (a scaled-to-zero expert
is not a failed one).
"""
from __future__ import annotations

import logging
import math
import time
from collections import deque

log = logging.getLogger("ray.serve")

#: how far back a replica's rows-per-second looks (seconds)
WINDOW_S = 5.0
METRIC = "rows_per_s"


class RowMeter:
    """Rows computed in the last ``window_s`` seconds, as a rate (the replica's age bounds the window)."""

    def __init__(self, window_s: float = WINDOW_S, clock=time.monotonic):
        self.window_s, self.clock = window_s, clock
        self.started = clock()
        self.events: deque[tuple[float, int]] = deque()

    def add(self, rows: int) -> None:
        self.events.append((self.clock(), int(rows)))

    def rate(self) -> float:
        now = self.clock()
        while self.events and self.events[0][0] < now - self.window_s:
            self.events.popleft()
        span = max(min(self.window_s, now - self.started), 1e-3)
        return sum(r for _, r in self.events) / span


class RowsPolicy:
    """Serve's custom autoscaling policy of an expert deployment (``policy_function`` with ``policy_kwargs``):
    ``ceil(total rows/s / target_rows_per_s)`` replicas; 0 when nothing was routed to it; the current count
    while no replica has reported yet. Bounds and delays are Serve's (``autoscaling_config``)."""

    def __init__(self, target_rows_per_s: float):
        if target_rows_per_s <= 0:
            raise ValueError(f"target_rows_per_s must be > 0, got {target_rows_per_s}")
        self.target = float(target_rows_per_s)

    def __call__(self, ctx) -> tuple[int, dict]:
        per_replica = (ctx.aggregated_metrics or {}).get(METRIC) or {}
        if ctx.current_num_replicas == 0:  # cold: start one as soon as a call waits for it
            return (1 if ctx.total_num_requests > 0 else 0), {}
        if not per_replica:  # replicas starting, nothing reported yet
            return ctx.current_num_replicas, {}
        rows = float(sum(per_replica.values()))
        n = desired_replicas(rows, self.target, busy=ctx.total_num_requests > 0)
        log.debug("atoll rows policy: %s %.1f rows/s, %s waiting, %d replicas -> %d",
                  getattr(ctx, "deployment_name", "?"), rows, ctx.total_num_requests, ctx.current_num_replicas, n)
        return n, {"rows_per_s": rows}


def desired_replicas(rows_per_s: float, target: float, busy: bool = False) -> int:
    """``ceil(rows_per_s / target)``, at least 1 while a call is in flight."""
    n = math.ceil(rows_per_s / target - 1e-9) if rows_per_s > 0 else 0
    return max(n, 1 if busy else 0)


def autoscaling_config(min_replicas: int, max_replicas: int, target_rows_per_s: float, idle_s: float,
                       upscale_delay_s: float) -> dict:
    """Serve's ``autoscaling_config`` of an expert deployment scaled on rows."""
    return {"min_replicas": min_replicas, "max_replicas": max_replicas, "initial_replicas": max(min_replicas, 1),
            "metrics_interval_s": 1.0, "look_back_period_s": 5.0,
            "upscale_delay_s": upscale_delay_s, "downscale_delay_s": idle_s, "downscale_to_zero_delay_s": idle_s,
            "policy": {"policy_function": "atoll.serve.autoscale:RowsPolicy",
                       "policy_kwargs": {"target_rows_per_s": target_rows_per_s}}}
