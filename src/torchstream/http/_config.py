"""The HTTP front end's settings: one frozen object, built by the CLI or by hand."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["ServeConfig", "read_api_keys"]


@dataclass(frozen=True)
class ServeConfig:
    """How ``torchstream serve`` admits, limits and answers requests.

    - ``max_in_flight``: requests (infer, jobs and websocket frames together) inside the
      pipeline at once; past it a request is answered ``429`` at once, with ``Retry-After``
      from the measured service rate. Rule of thumb: a few times the model's batch size, and
      no more than what the pipeline finishes within ``deadline_seconds``.
    - ``deadline_seconds``: how long ``POST /v1/infer`` waits for its result before it
      answers ``504`` (a request may ask for less with ``?deadline_seconds=``, never more);
      the frame is then dropped from the pipeline if no stage has started on it.
    - ``max_body_bytes``: larger bodies get ``413``, checked while reading.
    - ``max_image_pixels`` / ``max_image_side``: larger images get ``422``, checked from the
      image header before anything is decoded (decompression bombs never decode).
    - ``api_keys``: when not empty, every route but health and the OpenAPI documents needs
      ``Authorization: Bearer <key>`` (compared in constant time), else ``401``.
    - ``job_ttl_seconds`` / ``max_jobs`` / ``max_job_result_bytes``: finished jobs are kept
      this long, this many, this much result JSON in all (the oldest finished go first; when
      unfinished jobs alone fill ``max_jobs``, ``POST /v1/jobs`` answers ``429``).
    - ``max_stream_in_flight``: frames of one websocket inside the pipeline at once; past it
      the server stops reading that socket until results go out (backpressure, no loss).
    - ``cors_origins``: origins allowed by CORS; empty (the default) turns CORS off.
    - ``infer_source_id``: the source id of ``/v1/infer`` and ``/v1/jobs`` frames.
    """

    max_in_flight: int = 256
    deadline_seconds: float = 10.0
    max_body_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_image_side: int = 16384
    api_keys: tuple[str, ...] = ()
    job_ttl_seconds: float = 300.0
    max_jobs: int = 10_000
    max_job_result_bytes: int = 256 * 1024 * 1024
    max_stream_in_flight: int = 8
    cors_origins: tuple[str, ...] = ()
    infer_source_id: str = "http"

    def __post_init__(self) -> None:
        for name in ("max_in_flight", "max_body_bytes", "max_image_pixels", "max_image_side",
                     "max_jobs", "max_job_result_bytes", "max_stream_in_flight"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("deadline_seconds", "job_ttl_seconds"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
        if any(not key or key != key.strip() for key in self.api_keys):
            raise ValueError("api_keys must be non-empty strings without surrounding spaces")
        if not self.infer_source_id:
            raise ValueError("infer_source_id must not be empty")


def read_api_keys(path: str | Path) -> tuple[str, ...]:
    """The keys in ``path``, one per line (blank lines and ``#`` comments skipped).

    Raises ValueError naming the file when it holds no key."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    keys = tuple(
        line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")
    )
    if not keys:
        raise ValueError(f"{path}: no API key in the file (one key per line)")
    return keys
