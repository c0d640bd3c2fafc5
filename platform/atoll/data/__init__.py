"""Data stages: sources -> WebDataset shards (``run/data``) -> one shard set per expert (``run/partition``).

Public API::

    run_data(job, run) -> dict            # committed manifest of run/data
    run_partition(job, run) -> dict       # committed manifest of run/partition
    load_arrays(store, prefix) -> Arrays  # a whole artifact in memory (small data, tests)
    iter_samples(store, prefix, *, rank=0, world_size=1, shuffle_seed=None)  # a plain webdataset stream

Training reads (``atoll.data.loader``): ``Collection(store, prefixes)`` + ``Schedule(n, seed, rank,
world)`` -> ``open_loader(col, schedule, "stream" | "memory").batch(start, stop)``; see docs/data.md.
"""
from atoll.data.errors import CorruptShard, DataError
from atoll.data.readers import Arrays, iter_samples, load_arrays


def run_data(job, run):
    from atoll.data.stage import run_data as _run

    return _run(job, run)


def run_partition(job, run):
    from atoll.data.partition import run_partition as _run

    return _run(job, run)


def expert_prefix(k: int) -> str:
    """Where expert ``k``'s shards live in the run: ``partition/expert-NNN``."""
    from atoll.data.partition import expert_prefix as _p

    return _p(k)


__all__ = ["Arrays", "CorruptShard", "DataError", "expert_prefix", "iter_samples", "load_arrays",
           "run_data", "run_partition"]
