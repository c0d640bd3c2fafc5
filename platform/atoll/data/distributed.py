"""The raw Ray calls of the data stages: run a function as one Ray task per
item, with progress, failing fast with the task's own error."""
from __future__ import annotations

from collections.abc import Callable, Sequence

from atoll.progress import task


def map_tasks(fn: Callable, args: Sequence[tuple], *, desc: str, num_cpus: float = 1) -> list:
    """``[fn(*a) for a in args]`` as Ray tasks; results in order. The first failure
    cancels the rest and is re-raised as the task's original exception."""
    import ray
    from atoll.runtime import ensure_ray

    ensure_ray()
    remote = ray.remote(num_cpus=num_cpus, max_retries=0)(fn)
    refs = [remote.remote(*a) for a in args]
    index = {r: i for i, r in enumerate(refs)}
    results: list = [None] * len(refs)
    pending = list(refs)
    with task(desc, total=len(refs)) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                results[index[done[0]]] = ray.get(done[0])
            except ray.exceptions.RayTaskError as e:
                for r in pending:
                    ray.cancel(r, force=True)
                cause = getattr(e, "cause", None)
                if isinstance(cause, BaseException):
                    raise cause from None
                raise
            bar.advance()
    return results
