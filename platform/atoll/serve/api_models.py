"""The HTTP API's response bodies, as pydantic models, so that ``/openapi.json`` documents every answer
(the property-based tests check each response against them)."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ErrorDetail(BaseModel):
    field: str
    message: str


class ErrorInfo(BaseModel):
    field: str | None = Field(description="The request field to change (dotted path), or null.")
    message: str = Field(description="What is wrong and how to fix it.")
    limit: Any = Field(None, description="The allowed value or range, when there is one.")
    details: list[ErrorDetail] | None = Field(None, description="Every problem found (validation errors).")


class ErrorBody(BaseModel):
    """Every 4xx / 5xx answer: ``{"error": {"field", "message", "limit"?, "details"?}}``."""

    error: ErrorInfo


class ExpertsUsed(BaseModel):
    rows: dict[str, int] = Field(description="Request rows each expert evaluated, over all steps.")
    per_step: list[list[int]] = Field(description="Experts this request's rows used at each step.")
    degraded: list[str] = Field(description="Experts that were down and routed around.")


class Timings(BaseModel):
    wall_s: float = Field(description="Seconds from arrival at the ingress to the answer.")
    queue_s: float = Field(description="Seconds waiting for room in the scheduler's batch.")
    compute_s: float = Field(description="Seconds from its first tick to its last.")
    mean_batch_rows: float = Field(description="Rows (of all requests) in the ticks it took part in.")


class GenerateJSON(BaseModel):
    """``format: json``: base64 PNGs (image runs) or GIFs (video runs) and what was computed."""

    model_config = ConfigDict(populate_by_name=True)

    images: list[str] | None = Field(None, description="Image runs: one base64 PNG per image.")
    videos: list[str] | None = Field(None, description="Video runs: one base64 GIF per clip.")
    format: str
    n: int
    seed: int
    steps: int
    strategy: str
    guidance: float
    class_: int | None = Field(None, alias="class")
    prompt: str | None = None
    size: int
    frames: int | None = None
    fps: float | None = None
    sequence_parallel: int | None = None
    experts: ExpertsUsed
    timings: Timings


class ImageData(BaseModel):
    b64_json: str = Field(description="The PNG, base64-encoded.")
    revised_prompt: str | None = Field(None, description="The class the prompt was read as (class-conditional runs).")


class ImagesResponse(BaseModel):
    """OpenAI's ``POST /v1/images/generations`` answer."""

    created: int = Field(description="Unix time of the answer.")
    data: list[ImageData]


class ExpertRow(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: int
    name: str
    deployment: str
    expert: int | None = Field(None, description="The expert's id in the run (its folder experts/00N); differs "
                               "from id after an expert was retired (served experts are numbered 0..K-1).")
    partition_size: int | None = None
    top_labels: list[dict[str, Any]] = Field(default_factory=list)
    healthy: bool
    running_replicas: int | None = None
    parallel: dict[str, Any] | None = None


class ExpertsBody(BaseModel):
    num_experts: int
    version: int = Field(1, description="The experts/registry.json version the answering replica serves.")
    num_classes: int
    class_names: list[str]
    image_shape: list[int]
    video: bool
    frames: int | None = None
    sequence_parallel: int
    mode: str
    experts: list[ExpertRow]


class HealthBody(BaseModel):
    status: str = Field(description="ok, or unavailable (then the answer is a 503).")
    mode: str
    replicas: dict[str, int] = Field(description="Running replicas per deployment (Serve's status).")
    healthy_experts: list[str]


class StatsBody(BaseModel):
    """The scheduler's own counters, of the replica that answered (``pid``)."""

    model_config = ConfigDict(extra="allow")

    ticks: int
    mean_rows_per_tick: float
    max_rows_per_tick: int
    expert_forwards: int
    mean_rows_per_expert_forward: float
    in_flight: int
    queued: int
    mode: str
    device: str
    pid: int
    registry_version: int = Field(1, description="The experts/registry.json version this replica serves.")
    reloads: int = Field(0, description="New registry versions this replica loaded without a redeploy.")
