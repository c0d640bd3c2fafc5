"""The raw Ray calls of the data stages: run a function as one Ray task per
item, with progress, failing fast with the task's own error."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from atoll.progress import task


def _rate(n: float) -> str:
    return f"{n / 1000:.1f}k" if n >= 1000 else f"{n:.0f}"


def map_tasks(fn: Callable, args: Sequence[tuple], *, desc: str, num_cpus: float = 1, num_gpus: float = 0,
              on_result: Callable[[int, object], None] | None = None,
              samples_of: Callable[[object], int] | None = None) -> list:
    """``[fn(*a) for a in args]`` as Ray tasks; results in order. The first failure
    cancels the rest and is re-raised as the task's original exception.

    ``on_result(i, result)``: each result as it arrives, not kept (so the driver holds only what
    the callback keeps; the returned list is then all None). ``samples_of(result)``: samples a
    result stands for, shown as samples and samples/s next to the tasks done and the ETA.
    """
    import ray
    from atoll.runtime import ensure_ray

    ensure_ray()
    # a worker that dies (OOM-killed, or one a cancelled earlier stage force-killed that Ray handed this task)
    # is retried; the task's own exceptions are not (retry_exceptions stays False): they fail fast below
    remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=2)(fn)
    refs = [remote.remote(*a) for a in args]
    index = {r: i for i, r in enumerate(refs)}
    results: list = [None] * len(refs)
    pending = refs  # a finished task's result is dropped by the driver once handled
    samples, t0 = 0, time.time()
    with task(desc, total=len(refs)) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                res = ray.get(done[0])
            except ray.exceptions.RayTaskError as e:
                for r in pending:
                    ray.cancel(r, force=True)
                cause = getattr(e, "cause", None)
                if isinstance(cause, BaseException):
                    raise cause from None
                raise
            i = index.pop(done[0])
            del done
            fields = {}
            if samples_of is not None:
                samples += samples_of(res)
                fields = {"samples": samples, "samples/s": _rate(samples / max(1e-9, time.time() - t0))}
            if on_result is not None:
                on_result(i, res)
            else:
                results[i] = res
            del res
            bar.advance(**fields)
    return results
