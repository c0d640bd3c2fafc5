"""Sampling from a trained run: the expert ensemble, routing strategies, traces, grids, the samples stage.

Main entry points: ``Ensemble.from_pretrained(run_uri).sample(...)``, ``grid_png``,
``trace_png`` and (for the pipeline) ``atoll.sampling.stage.run_samples``.
"""
from __future__ import annotations

from atoll.sampling.ensemble import Ensemble
from atoll.sampling.errors import RunNotFound, SamplingError
from atoll.sampling.grid import grid_png, to_uint8
from atoll.sampling.result import SampleResult
from atoll.sampling.strategies import num_selected, select
from atoll.sampling.trace import Trace, TraceStep
from atoll.sampling.trace_plot import trace_png

__all__ = ["Ensemble", "RunNotFound", "SampleResult", "SamplingError", "Trace", "TraceStep", "grid_png",
           "num_selected", "select", "to_uint8", "trace_png"]
