"""The documented shapes of the front end's answers (OpenAPI). The routes encode answers with
msgspec for speed; these pydantic models describe the same JSON."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

__all__ = ["ErrorBody", "Health", "InferResult", "JobAccepted", "JobStatus"]


class ObjectResult(BaseModel):
    id: int = Field(description="Unique within the frame.")
    label: str
    confidence: float
    box: list[float] = Field(description="[x1, y1, x2, y2] in pixels of the image sent.")
    mask: dict[str, Any] | None = Field(None, description="Run-length encoded mask, if any.")
    keypoints: list[list[Any]] | None = Field(None, description="[x, y, confidence, name].")
    track_id: int | None = None
    parent_id: int | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)


class Timings(BaseModel):
    total_ms: float = Field(description="From the request's arrival to its answer.")
    pipeline_ms: float | None = Field(
        None, description="From the decoded image entering the pipeline to its result "
        "(in-process pipelines only).",
    )


class InferResult(BaseModel):
    """What the pipeline found in one image."""

    source_id: str
    seq: int = Field(description="The frame's number within its source.")
    width: int
    height: int
    objects: list[ObjectResult]
    attributes: dict[str, Any] = Field(description="Frame-level results of the stages.")
    trace_id: str | None = Field(
        None, description="W3C trace id of the request (from its traceparent, or new)."
    )
    timings: Timings


class ErrorBody(BaseModel):
    error: str = Field(description="What was wrong, for people.")
    status: int
    retry_after_seconds: float | None = Field(
        None, description="On 429/503: when to try again (the Retry-After header rounds up)."
    )


class JobAccepted(BaseModel):
    id: str
    status: Literal["pending"]
    href: str = Field(description="Where to ask for the job's state (also in Location).")


class JobStatus(BaseModel):
    id: str
    status: Literal["pending", "done", "failed"]
    created_at_seconds: float = Field(description="Unix time of the request.")
    result: InferResult | None = None
    error: ErrorBody | None = None


class Health(BaseModel):
    ok: bool
    reason: str
