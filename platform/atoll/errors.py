"""The exceptions that mean 'bad input or a failed stage', printed without a traceback."""
from __future__ import annotations


def user_errors() -> tuple[type[BaseException], ...]:
    from atoll.islands.local import IslandsFailed
    from atoll.pipeline import PipelineError
    from atoll.spec import SpecError
    from atoll.store import StoreError

    from atoll.islands.plan import TrainedWithOtherSpec

    errs: list[type[BaseException]] = [SpecError, StoreError, PipelineError, IslandsFailed, FileNotFoundError,
                                       TrainedWithOtherSpec]
    from atoll.data.errors import DataError
    from atoll.k8s.errors import KubernetesError

    from atoll.eval.errors import EvalError
    from atoll.sampling.errors import SamplingError

    from atoll.distill import DistillError
    from atoll.experts_registry import RegistryError
    from atoll.grow import GrowError

    errs += [DataError, KubernetesError, EvalError, SamplingError, DistillError, RegistryError, GrowError]
    return tuple(errs)
