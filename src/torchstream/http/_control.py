"""The control API of a running pipeline: list, add and remove its sources over HTTP
(``torchstream run --control-port``)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from torchstream._types import Source
from torchstream.http._auth import Keys
from torchstream.http._server import Problem
from torchstream.pipeline import Pipeline, SourceStatistics

__all__ = ["SourceRequest", "create_control_app"]

_REMOVE_TIMEOUT_SECONDS = 30.0


class SourceRequest(BaseModel):
    """What ``PUT /v1/sources/{id}`` takes."""

    uri: str = Field(description="A camera device, stream URL, video file or image folder.",
                     min_length=1, max_length=4096)
    policy: Literal["latest", "every"] | None = Field(
        None, description="Live inputs: `latest` (default: newest frame, drop what cannot "
        "be processed) or `every` (every frame, backpressure upstream).",
    )


OpenSource = Callable[[str, str, SourceRequest], Source]


def _open(uri: str, source_id: str, request: SourceRequest) -> Source:
    from torchstream.sources import open_source

    policy = {"latest": "latest", "every": "block", None: None}[request.policy]
    return open_source(uri, source_id=source_id, policy=policy)  # type: ignore[arg-type]


def _describe(stats: SourceStatistics) -> dict[str, Any]:
    return {
        "source_id": stats.source_id,
        "running": stats.running,
        "frames_in": stats.frames_in,
        "frames_out": stats.frames_out,
        "frames_per_second": round(stats.frames_per_second, 3),
        "dropped": stats.dropped,
        "sessions": stats.sessions,
        "decoder": stats.decoder,
        "lag_seconds_p50": stats.lag_seconds_p50,
        "lag_seconds_p99": stats.lag_seconds_p99,
        "errors": list(stats.errors[-5:]),
        "live": dataclasses.asdict(stats.live) if stats.live is not None else None,
    }


def create_control_app(
    pipeline: Pipeline,
    *,
    api_keys: Sequence[str] = (),
    open_source: OpenSource = _open,
) -> FastAPI:
    """An ASGI app that manages ``pipeline``'s sources while it runs:

    - ``GET /v1/sources``: every source the pipeline knows (running, and the last finished
      ones), with counts, fps, lag, errors and, for live inputs, the connection's state;
    - ``GET /v1/sources/{id}``: one of them (``404`` if unknown);
    - ``PUT /v1/sources/{id}`` with ``{"uri": ..., "policy": ...}``: start reading it
      (``201``; ``409`` if that id is running; ``422`` for an input that cannot be used);
    - ``DELETE /v1/sources/{id}``: stop it cleanly: its session ends (end-of-stream to the
      stages and sinks), its decoder and connection are freed (``404`` if unknown);
    - ``GET /healthz``, ``GET /readyz``: the pipeline's liveness and readiness.

    ``api_keys``: when given, every route but health needs ``Authorization: Bearer <key>``.
    ``open_source(uri, source_id, request)`` makes the source (default:
    :func:`~torchstream.sources.open_source`).
    """
    keys = Keys(api_keys)
    app = FastAPI(title="torchstream control", summary="The sources of a running pipeline.")

    @app.exception_handler(Problem)
    async def problem(request: Request, exc: Problem) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    def unauthorized() -> Problem:
        return Problem(401, "missing or wrong API key: send Authorization: Bearer <key>",
                       headers={"WWW-Authenticate": "Bearer"})

    secured = [Depends(keys.dependency(unauthorized))]

    def known(source_id: str) -> SourceStatistics:
        stats = pipeline.statistics().sources.get(source_id)
        if stats is None:
            raise Problem(404, f"no source {source_id!r} in this pipeline")
        return stats

    @app.get("/v1/sources", dependencies=secured, tags=["sources"])
    async def list_sources() -> dict[str, Any]:
        """Every source: running ones and the most recently finished."""
        sources = pipeline.statistics().sources.values()
        return {"sources": [_describe(stats) for stats in sources]}

    @app.get("/v1/sources/{source_id}", dependencies=secured, tags=["sources"])
    async def get_source(source_id: str) -> dict[str, Any]:
        """One source's counts, lag, errors and connection."""
        return _describe(known(source_id))

    @app.put("/v1/sources/{source_id}", status_code=201, dependencies=secured,
             tags=["sources"])
    async def put_source(source_id: str, request: SourceRequest) -> dict[str, Any]:
        """Start reading ``uri`` as ``source_id``."""
        if source_id in pipeline.sources():
            raise Problem(409, f"source {source_id!r} is running: DELETE it first")
        try:
            source = await asyncio.to_thread(open_source, request.uri, source_id, request)
            pipeline.add_source(source)
        except ValueError as exc:
            status = 409 if "already running" in str(exc) else 422
            raise Problem(status, f"source {source_id!r}: {exc}") from None
        return _describe(known(source_id))

    @app.delete("/v1/sources/{source_id}", dependencies=secured, tags=["sources"])
    async def delete_source(source_id: str) -> dict[str, Any]:
        """Stop the source; answers once its session ended (or after 30 s, ``drained``
        false, while it finishes in the background)."""
        try:
            drained = await asyncio.to_thread(
                pipeline.remove_source, source_id, timeout_seconds=_REMOVE_TIMEOUT_SECONDS
            )
        except KeyError:
            raise Problem(404, f"no source {source_id!r} in this pipeline") from None
        return {"source_id": source_id, "removed": True, "drained": drained}

    @app.get("/healthz", tags=["health"])
    async def healthz() -> JSONResponse:
        health = pipeline.health()
        return JSONResponse({"ok": health.alive, "reason": health.reason},
                            status_code=200 if health.alive else 503)

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        health = pipeline.health()
        return JSONResponse({"ok": health.ready, "reason": health.reason},
                            status_code=200 if health.ready else 503)

    return app
