"""The FastAPI application: routes, admission, authentication, limits."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs

import msgspec
from fastapi import Depends, FastAPI, Query, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect, WebSocketState

from torchstream.client._trace import check_traceparent, new_traceparent, trace_id_of
from torchstream.frame import ObjectMeta
from torchstream.http import _schemas as schemas
from torchstream.http._admission import Admission
from torchstream.http._auth import Keys
from torchstream.http._backend import Backend, Outcome, RequestFailed
from torchstream.http._config import ServeConfig
from torchstream.http._images import ImageRejected, check_image, image_from_request
from torchstream.http._jobs import Job, JobStore
from torchstream.http._metrics import CountingMiddleware, HttpCollector, HttpCounters

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


class Problem(Exception):
    """An answer other than success: the status, a message for people, headers."""

    def __init__(
        self, status: int, message: str, *, headers: dict[str, str] | None = None,
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.retry_after_seconds = retry_after_seconds

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message, "status": self.status}
        if self.retry_after_seconds is not None:
            body["retry_after_seconds"] = round(self.retry_after_seconds, 3)
        return body


class _Timings(msgspec.Struct):
    total_ms: float
    pipeline_ms: float | None


class _Result(msgspec.Struct):
    source_id: str
    seq: int
    width: int
    height: int
    objects: list[ObjectMeta]
    attributes: dict[str, Any]
    trace_id: str | None
    timings: _Timings


_encode = msgspec.json.Encoder().encode


class _Server:
    """The state the routes share, on the event loop's thread."""

    def __init__(
        self,
        backend: Backend,
        config: ServeConfig,
        clock: Callable[[], float],
        on_start_failure: Callable[[BaseException], None] | None,
    ) -> None:
        self._on_start_failure = on_start_failure
        self.backend = backend
        self.config = config
        self.clock = clock
        self.admission = Admission(config.max_in_flight, clock=clock)
        self.jobs = JobStore(
            max_jobs=config.max_jobs, max_result_bytes=config.max_job_result_bytes,
            ttl_seconds=config.job_ttl_seconds, clock=clock,
        )
        self.counters = HttpCounters()
        self.streams: dict[str, _Stream] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.start_error: BaseException | None = None
        self.keys = Keys(config.api_keys)

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        try:
            await self.backend.start()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.start_error = exc
            log.error("serve: the pipeline failed to start: %s", exc)
            if self._on_start_failure is not None:
                self._on_start_failure(exc)

    # -- gates --------------------------------------------------------------------------
    def check_ready(self) -> None:
        health = self.backend.health()
        if not health.ready:
            raise Problem(
                503, f"not ready: {health.reason}", headers={"Retry-After": "1"},
                retry_after_seconds=1.0,
            )

    def refusal(self) -> Problem:
        """The 429 of a request the admission refused."""
        return Problem(
            429,
            f"{self.admission.in_flight} requests in flight: more than this server finishes "
            "before this one's deadline, or its limit; retry later",
            headers={"Retry-After": self.admission.retry_after_header()},
            retry_after_seconds=self.admission.retry_after_seconds(),
        )

    def admitted(self, request: Request) -> tuple[float, float]:
        """``(arrival, deadline)`` of a request the gate admitted; one it let through
        unadmitted (the pipeline was not ready) is answered 503 here."""
        state = request.scope.get("state", {})
        if "deadline" not in state:
            self.check_ready()
            raise Problem(503, "not ready yet", headers={"Retry-After": "1"},
                          retry_after_seconds=1.0)
        return state["arrival"], state["deadline"]

    def deadline(self, started: float, asked: float | None) -> float:
        seconds = self.config.deadline_seconds if asked is None else min(
            asked, self.config.deadline_seconds
        )
        return started + seconds

    # -- one frame ----------------------------------------------------------------------
    async def read_image(self, request: Request, deadline: float) -> Any:
        cfg = self.config
        request.state.body_read = True  # whatever happens now, nothing to discard later
        try:
            return await asyncio.wait_for(
                image_from_request(
                    request, max_bytes=cfg.max_body_bytes, max_pixels=cfg.max_image_pixels,
                    max_side=cfg.max_image_side,
                ),
                max(0.0, deadline - self.clock()),
            )
        except ImageRejected as exc:
            raise Problem(exc.status, exc.message) from None
        except asyncio.TimeoutError:
            raise Problem(408, "the body did not arrive before the deadline") from None

    async def wait(self, future: asyncio.Future[Outcome], deadline: float) -> Outcome:
        try:
            return await asyncio.wait_for(future, max(0.0, deadline - self.clock()))
        except asyncio.TimeoutError:
            self.counters.expired_total += 1
            raise Problem(
                504, "no result before the deadline; the frame is dropped unless a stage had "
                "started on it",
            ) from None
        except RequestFailed as exc:
            raise Problem(exc.status, exc.message) from None

    def result_json(self, outcome: Outcome, traceparent: str, started: float) -> bytes:
        frame = outcome.frame
        pipeline_ms = (
            None if outcome.pipeline_seconds is None else round(outcome.pipeline_seconds * 1e3, 3)
        )
        return _encode(
            _Result(
                source_id=frame.source_id, seq=frame.seq, width=frame.width,
                height=frame.height, objects=frame.objects, attributes=frame.attributes,
                trace_id=trace_id_of(traceparent) if traceparent else None,
                timings=_Timings(round((self.clock() - started) * 1e3, 3), pipeline_ms),
            )
        )

    async def finish_job(
        self, job: Job, future: asyncio.Future[Outcome], deadline: float, traceparent: str,
        started: float,
    ) -> None:
        served = False
        try:
            outcome = await self.wait(future, deadline)
            self.jobs.finish(job, self.result_json(outcome, traceparent, started))
            served = True
        except Problem as exc:
            self.jobs.fail(job, exc.status, exc.message)
        except BaseException as exc:  # cancelled at shutdown: the job still gets an answer
            self.jobs.fail(job, 503, f"the server stopped ({type(exc).__name__})")
            raise
        finally:
            self.admission.leave(served=served)


class _AdmissionGate:
    """Admits or refuses ``POST /v1/infer`` and ``/v1/jobs`` in plain ASGI, before FastAPI's
    per-request work (routing, dependencies, validation), so that refusing a burst costs
    little and is answered at once. It owns the request's slot: released when the answer has
    gone, unless the route handed it to a job (``request.state.slot = "job"``).

    Requests it cannot judge cheaply pass through unadmitted and the route answers them:
    without a right API key (401), before the pipeline is ready (503), with a malformed
    ``deadline_seconds`` (422)."""

    _ROUTES = ("/v1/infer", "/v1/jobs")

    def __init__(self, app: ASGIApp, server: _Server) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = self.server
        if (
            scope["type"] != "http" or scope["method"] != "POST"
            or scope["path"] not in self._ROUTES
            or (server.keys and not server.keys.accept_header(_header(scope, b"authorization")))
            or not server.backend.health().ready
        ):
            await self.app(scope, receive, send)
            return
        asked = _deadline_query(scope.get("query_string", b""))
        if asked is False:
            await self.app(scope, receive, send)
            return
        arrival = server.clock()
        deadline = server.deadline(arrival, asked or None)
        if not server.admission.try_enter(within_seconds=deadline - arrival):
            problem = server.refusal()
            await _drain(receive, server.config.max_body_bytes)
            body = json.dumps(problem.body()).encode()
            headers = [(b"content-type", b"application/json"),
                       (b"content-length", str(len(body)).encode())]
            headers += [(k.lower().encode(), v.encode()) for k, v in problem.headers.items()]
            await send({"type": "http.response.start", "status": 429, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        state = scope.setdefault("state", {})
        state["arrival"], state["deadline"] = arrival, deadline
        try:
            await self.app(scope, receive, send)
        finally:
            if state.get("slot") != "job":
                server.admission.leave(served=bool(state.get("served", False)))


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _deadline_query(query: bytes) -> float | bool | None:
    """``deadline_seconds`` from a query string: None when absent, False when malformed."""
    if b"deadline_seconds" not in query:
        return None
    values = parse_qs(query.decode("latin-1")).get("deadline_seconds", [])
    try:
        value = float(values[-1])
    except (IndexError, ValueError):
        return False
    return value if value > 0 and math.isfinite(value) else False


async def _drain(receive: Receive, max_bytes: int) -> None:
    """Read and drop a request's body (at most ``max_bytes``, for at most a second)."""

    async def drain() -> None:
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            total += len(message.get("body", b""))
            if total > max_bytes or not message.get("more_body", False):
                return

    with contextlib.suppress(Exception):
        await asyncio.wait_for(drain(), 1.0)


async def _discard_body(request: Request, max_bytes: int) -> None:
    """Read and drop what is left of the body (at most ``max_bytes``, for at most a
    second: past that the connection is closed instead)."""

    async def drain() -> None:
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > max_bytes:
                return

    with contextlib.suppress(Exception):
        await asyncio.wait_for(drain(), 1.0)


def _unauthorized() -> Problem:
    return Problem(
        401, "missing or wrong API key: send Authorization: Bearer <key>",
        headers={"WWW-Authenticate": "Bearer"},
    )


def _traceparent(value: str | None) -> str:
    """The request's W3C traceparent when valid (W3C: an invalid one is ignored), else a new
    one (the active OpenTelemetry span's when there is one)."""
    if value:
        with contextlib.suppress(ValueError):
            return check_traceparent(value.strip().lower())
    return new_traceparent()


def create_app(
    backend: Backend,
    config: ServeConfig | None = None,
    *,
    metrics: bool = False,
    on_start_failure: Callable[[BaseException], None] | None = None,
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
    """
    cfg = config or ServeConfig()
    server = _Server(backend, cfg, clock, on_start_failure)

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
    app.add_middleware(_AdmissionGate, server=server)
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
            await _discard_body(request, cfg.max_body_bytes)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    secured = [Depends(server.keys.dependency(_unauthorized))]
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
        traceparent = _traceparent(request.headers.get("traceparent"))
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
        traceparent = _traceparent(request.headers.get("traceparent"))
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


def _add_metrics(app: FastAPI, server: _Server, secured: list[Any]) -> None:
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


async def _stream(server: _Server, websocket: WebSocket) -> None:
    """``WS /v1/stream?source_id=…``: the frames of one session in, their results out, in
    order. See the README for the message format."""
    source_id = websocket.query_params.get("source_id", "")
    if not server.keys.accept_header(websocket.headers.get("authorization")):
        await websocket.close(code=1008, reason="missing or wrong API key")
        return
    # Refusals after the handshake, so that the client gets the close code and reason.
    refusal: tuple[int, str] | None = None
    health = server.backend.health()
    if not _SOURCE_ID.match(source_id):
        refusal = 1008, "source_id query parameter: 1-128 of A-Z a-z 0-9 . _ : @ / -"
    elif not health.ready:
        refusal = 1013, f"not ready: {health.reason}"[:120]
    elif (previous := server.streams.get(source_id)) is not None and previous.connected:
        refusal = 1008, f"source {source_id!r} is already streaming"[:120]
    await websocket.accept()
    if refusal is None and previous is not None:
        # Its previous connection is gone and its last frames are finishing: wait for them,
        # so that the new session starts after the old one ended.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(previous.finished.wait(), server.config.deadline_seconds)
        if source_id in server.streams:
            refusal = 1013, f"source {source_id!r} is still finishing its previous session"
    if refusal is not None:
        await websocket.close(code=refusal[0], reason=refusal[1])
        return
    state = server.streams[source_id] = _Stream()
    try:
        await _session(server, websocket, source_id, state)
    finally:
        await server.backend.end_source(source_id)
        del server.streams[source_id]
        state.finished.set()


class _Stream:
    """A websocket session: ``connected`` until its client left or ended it."""

    def __init__(self) -> None:
        self.connected = True
        self.finished = asyncio.Event()


_Pending = tuple[int, "asyncio.Future[Outcome] | Problem", float, float, str]


async def _session(
    server: _Server, websocket: WebSocket, source_id: str, state: _Stream
) -> None:
    cfg = server.config
    pending: asyncio.Queue[_Pending | None] = asyncio.Queue(cfg.max_stream_in_flight)
    writer = asyncio.create_task(_send_results(server, websocket, pending))
    index = 0
    ended = False
    try:
        while not writer.done():
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            started = server.clock()
            text = message.get("text")
            if text is not None:
                if _is_end(text):
                    ended = True
                    break
                await pending.put((index, Problem(400, "text messages: only {\"end\": true}"),
                                   started, started, ""))
                index += 1
                continue
            data: bytes = message.get("bytes") or b""
            await pending.put(_submit(server, source_id, index, data, started))
            index += 1
    finally:
        state.connected = False
        await pending.put(None)
        await asyncio.wait({writer})
    if ended and websocket.application_state == WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):
            await websocket.send_text(json.dumps({"type": "end", "source_id": source_id,
                                                  "frames": index}))
            await websocket.close(code=1000)


def _is_end(text: str) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return isinstance(value, dict) and value.get("end") is True


def _submit(server: _Server, source_id: str, index: int, data: bytes, started: float) -> _Pending:
    cfg = server.config
    deadline = server.deadline(started, None)
    try:
        if len(data) > cfg.max_body_bytes:
            raise ImageRejected(
                413, f"frame of {len(data)} bytes exceeds the limit of {cfg.max_body_bytes}"
            )
        image = check_image(data, declared=None, max_pixels=cfg.max_image_pixels,
                            max_side=cfg.max_image_side)
    except ImageRejected as exc:
        return (index, Problem(exc.status, exc.message), started, deadline, "")
    if not server.admission.try_enter(within_seconds=deadline - started):
        return (index, Problem(429, "too many frames in flight on this server",
                               retry_after_seconds=server.admission.retry_after_seconds()),
                started, deadline, "")
    traceparent = new_traceparent()
    future = server.backend.submit(
        source_id, image, deadline_monotonic=deadline, traceparent=traceparent
    )
    return (index, future, started, deadline, traceparent)


async def _send_results(
    server: _Server, websocket: WebSocket, pending: asyncio.Queue[_Pending | None]
) -> None:
    """Answers in the order the frames came; keeps draining (releasing admission) after the
    client went away."""
    connected = True
    while (item := await pending.get()) is not None:
        index, work, started, deadline, traceparent = item
        if isinstance(work, Problem):
            status, body = work.status, {"type": "error", "index": index, **work.body()}
            payload = json.dumps(body)
        else:
            served = False
            try:
                outcome = await server.wait(work, deadline)
                served = True
                status = 200
                payload = (
                    b'{"type": "result", "index": ' + str(index).encode() + b", "
                    + server.result_json(outcome, traceparent, started)[1:]
                ).decode()
            except Problem as exc:
                status = exc.status
                payload = json.dumps({"type": "error", "index": index, **exc.body()})
            finally:
                server.admission.leave(served=served)
        server.counters.stream_frames[status] += 1
        if connected:
            try:
                await websocket.send_text(payload)
            except (WebSocketDisconnect, RuntimeError, OSError):
                connected = False
