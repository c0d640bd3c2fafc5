"""Job specs: pydantic models, YAML loading with readable errors, JSON Schema."""
from atoll.spec.errors import Problem, SpecError
from atoll.spec.loader import dump, json_schema, load, loads, parse
from atoll.spec.models import JobSpec

__all__ = ["JobSpec", "Problem", "SpecError", "dump", "json_schema", "load", "loads", "parse"]
