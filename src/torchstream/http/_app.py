"""The FastAPI application and its routes (admission: _gate.py; websocket: _stream.py)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Depends, FastAPI, Query, Request, WebSocket
from fastapi.responses import JSONResponse, Response

from torchstream.http import _schemas as schemas
from torchstream.http._backend import Backend
from torchstream.http._config import ServeConfig
from torchstream.http._gate import AdmissionGate, discard_body
from torchstream.http._metrics import CountingMiddleware, HttpCollector
from torchstream.http._server import Problem, Server, request_traceparent, unauthorized
from torchstream.http._stream import stream as _stream

__all__ = ["create_app"]

log = logging.getLogger(__name__)

_SOURCE_ID = re.compile(r"^[A-Za-z0-9._:@/-]{1,128}$")
_IMAGE_BODY = {
    "required": True,
    "description": "The image: a raw JPEG or PNG body, or a multipart form with one file.",
    "content": {
        "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        "image/png": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"image": {"type": "string", "format": "binary"}},
                "required": ["image"],
            }
        },
    },
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorBody, "description": text}
    for code, text in {
        400: "Malformed request or image.",
        401: "Missing or wrong API key (when keys are configured).",
        408: "The body did not arrive before the deadline.",
        413: "Body larger than the limit.",
        415: "Not a JPEG or PNG image (or a Content-Type we do not take).",
        422: "Image larger than the limits, or it does not decode.",
        429: "Too many requests in flight: retry after Retry-After seconds.",
        500: "A stage of the pipeline failed on this image.",
        503: "The pipeline is not ready (starting, warming up, stopping).",
        504: "No result before the deadline; the frame is dropped if no stage started on it.",
    }.items()
}


def create_app(
    backend: Backend,
    config: ServeConfig | None = None,
    *,
    metrics: bool = False,
    on_start_failure: Callable[[BaseException], None] | None = None,
    trace_ratio: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """The HTTP front end of ``backend`` (an :class:`InProcessBackend` or a
    :class:`ModuleBackend`), served by any ASGI server (``uvicorn.run(app)``).

    The backend starts in the background when the app starts: ``/healthz`` answers at once,
    ``/readyz`` and the inference routes answer ``503`` until the models are loaded and warm.
    At shutdown the server finishes the requests it accepted, then the backend drains and
    stops. ``metrics``: serve ``/metrics`` (needs ``prometheus-client``: ``pip install
    'torchstream[telemetry]'``). ``on_start_failure(exc)`` is called when the backend fails
    to start (the CLI stops the server then); either way ``/healthz`` reports it.
    ``trace_ratio``: the share of requests without a ``traceparent`` header that are traced
    (requests that bring one follow its sampled flag).
    """
    cfg = config or ServeConfig()
    server = Server(backend, cfg, clock, on_start_failure)
    server.trace_ratio = trace_ratio

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        starting = asyncio.create_task(server.start(), name="ts/http/start")
        app.state.starting = starting
        try:
            yield
        finally:
            if not starting.done():
                starting.cancel()
            await asyncio.wait({starting})
            for task in list(server.tasks):  # jobs still waiting: answered by the drain
                await asyncio.wait({task}, timeout=cfg.deadline_seconds)
            await backend.aclose()

    app = FastAPI(
        title="torchstream",
        summary="Send images, get each one's result from a pipeline that batches across "
        "all requests.",
        lifespan=lifespan,
        responses=_ERRORS,
    )
    app.state.server = server
    app.add_middleware(AdmissionGate, server=server)
    app.add_middleware(CountingMiddleware, counters=server.counters, clock=clock)
    if cfg.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=list(cfg.cors_origins), allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "traceparent"],
        )

    @app.exception_handler(Problem)
    async def problem(request: Request, exc: Problem) -> JSONResponse:
        if request.method == "POST" and not getattr(request.state, "body_read", False):
            # Refused before reading (401, 429, 503): take the rest of the upload first, so
            # the client reads its answer on a connection that stays open, not a reset.
            await discard_body(request, cfg.max_body_bytes)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    secured = [Depends(server.keys.dependency(unauthorized))]
    deadline_query = Query(
        None, gt=0, description="Seconds to wait for the result (at most the server's "
        "deadline, which is also the default).",
    )

    @app.post(
        "/v1/infer", response_model=schemas.InferResult, dependencies=secured,
        openapi_extra={"requestBody": _IMAGE_BODY}, tags=["inference"],
    )
    async def infer(request: Request, deadline_seconds: float | None = deadline_query) -> Response:
        """Run the pipeline on one image and answer with its result.

        Past `max_in_flight` requests the answer is an immediate `429` with `Retry-After`;
        past the deadline `504`. A W3C `traceparent` header continues the caller's trace."""
        started, deadline = server.admitted(request)
        image = await server.read_image(request, deadline)
        traceparent = request_traceparent(
            request.headers.get("traceparent"), server.trace_ratio
        )
        future = backend.submit(
            cfg.infer_source_id, image, deadline_monotonic=deadline, traceparent=traceparent
        )
        outcome = await server.wait(future, deadline)
        request.state.served = True
        return Response(
            server.result_json(outcome, traceparent, started), media_type="application/json"
        )

    @app.post(
        "/v1/jobs", status_code=202, response_model=schemas.JobAccepted, dependencies=secured,
        openapi_extra={"requestBody": _IMAGE_BODY}, tags=["jobs"],
    )
    async def create_job(
        request: Request, deadline_seconds: float | None = deadline_query
    ) -> JSONResponse:
        """Accept one image and answer `202` with a job id at once; `GET /v1/jobs/{id}`
        gives its state and, once done, its result."""
        started, deadline = server.admitted(request)
        image = await server.read_image(request, deadline)
        job = server.jobs.create()
        if job is None:
            raise Problem(
                429, f"{cfg.max_jobs} jobs pending, the most this server keeps",
                headers={"Retry-After": server.admission.retry_after_header()},
            )
        request.state.slot = "job"  # released when the job is finished, not now
        traceparent = request_traceparent(
            request.headers.get("traceparent"), server.trace_ratio
        )
        future = backend.submit(
            cfg.infer_source_id, image, deadline_monotonic=deadline, traceparent=traceparent
        )
        task = asyncio.create_task(
            server.finish_job(job, future, deadline, traceparent, started),
            name=f"ts/http/job/{job.id}",
        )
        server.tasks.add(task)
        task.add_done_callback(server.tasks.discard)
        href = f"/v1/jobs/{job.id}"
        return JSONResponse(
            {"id": job.id, "status": job.state, "href": href}, status_code=202,
            headers={"Location": href},
        )

    @app.get(
        "/v1/jobs/{job_id}", response_model=schemas.JobStatus, dependencies=secured,
        tags=["jobs"],
    )
    async def get_job(job_id: str) -> Response:
        """A job's state (`pending`, `done`, `failed`) and its result or error. Finished
        jobs are kept for the server's job TTL; after that, or for an unknown id, `404`."""
        job = server.jobs.get(job_id)
        if job is None:
            raise Problem(404, f"no job {job_id!r} (unknown, or finished and expired)")
        head = {"id": job.id, "status": job.state, "created_at_seconds": job.created_seconds}
        if job.state == "done":
            assert job.result is not None
            return Response(
                json.dumps(head)[:-1].encode() + b', "result": ' + job.result + b"}",
                media_type="application/json",
            )
        if job.state == "failed":
            head["error"] = {"error": job.error, "status": job.error_status}
        return JSONResponse(head)

    @app.websocket("/v1/stream")
    async def stream(websocket: WebSocket) -> None:
        await _stream(server, websocket)

    @app.get("/healthz", response_model=schemas.Health, tags=["health"])
    async def healthz() -> JSONResponse:
        """Liveness: `200` while the pipeline runs (or starts), `503` once it failed."""
        health = backend.health()
        alive = health.alive and server.start_error is None
        return JSONResponse({"ok": alive, "reason": health.reason}, status_code=200 if alive
                            else 503)

    @app.get("/readyz", response_model=schemas.Health, tags=["health"])
    async def readyz() -> JSONResponse:
        """Readiness: `200` once the models are loaded and warm, `503` before and while
        stopping."""
        health = backend.health()
        return JSONResponse({"ok": health.ready, "reason": health.reason},
                            status_code=200 if health.ready else 503)

    @app.get("/v1/status", dependencies=secured, tags=["health"])
    async def status() -> dict[str, Any]:
        """A summary: admission, jobs, websocket sessions and the pipeline's counts."""
        admission = server.admission.statistics()
        return {
            "health": dataclasses.asdict(backend.health()),
            "admission": dataclasses.asdict(admission),
            "jobs": {"kept": len(server.jobs), "pending": server.jobs.pending,
                     "result_bytes": server.jobs.result_bytes},
            "streams": sorted(server.streams),
            "deadline_expired_total": server.counters.expired_total,
            "pipeline": backend.status(),
        }

    if metrics:
        _add_metrics(app, server, secured)
    return app


def _add_metrics(app: FastAPI, server: Server, secured: list[Any]) -> None:
    try:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    except ImportError:
        from torchstream._errors import MissingDependencyError

        raise MissingDependencyError("prometheus-client (for /metrics)", "telemetry") from None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HttpCollector(server.counters, server.admission, server.jobs))
    registry.register(_PipelineMetrics(server.backend))

    @app.get("/metrics", dependencies=secured, tags=["health"])
    async def prometheus() -> Response:
        """Prometheus exposition: HTTP requests, latency, admission, jobs, and the
        pipeline's own metrics when it runs in this process. Needs the API key when the
        server has keys (Prometheus: `authorization: {credentials_file: ...}`)."""
        body = await asyncio.to_thread(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)


class _PipelineMetrics:
    """The in-process pipeline's collector, looked up at scrape time (it starts later)."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Any:
        pipeline = getattr(self._backend, "pipeline", None)
        if pipeline is None:
            return
        from torchstream.telemetry._prometheus import PipelineCollector

        yield from PipelineCollector(pipeline).collect()
