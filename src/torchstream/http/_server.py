"""The state the front end's routes share, and how they answer: problems, results."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import msgspec
from fastapi import Request

from torchstream.client._trace import check_traceparent, new_traceparent, trace_id_of
from torchstream.frame import ObjectMeta
from torchstream.http._admission import Admission
from torchstream.http._auth import Keys
from torchstream.http._backend import Backend, Outcome, RequestFailed
from torchstream.http._config import ServeConfig
from torchstream.http._images import ImageRejected, image_from_request
from torchstream.http._jobs import Job, JobStore
from torchstream.http._metrics import HttpCounters

__all__ = ["Problem", "Server", "StreamState", "request_traceparent", "unauthorized"]

log = logging.getLogger(__name__)


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


class Server:
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
        self.streams: dict[str, StreamState] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.start_error: BaseException | None = None
        self.trace_ratio = 1.0
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


def unauthorized() -> Problem:
    return Problem(
        401, "missing or wrong API key: send Authorization: Bearer <key>",
        headers={"WWW-Authenticate": "Bearer"},
    )


def request_traceparent(value: str | None, sample_ratio: float) -> str:
    """The request's W3C traceparent when valid (W3C: an invalid one is ignored), else a new
    one, sampled for ``sample_ratio`` of requests (the pipeline's tracer follows its flag)."""
    if value:
        with contextlib.suppress(ValueError):
            return check_traceparent(value.strip().lower())
    return new_traceparent(sample_ratio=sample_ratio)


class StreamState:
    """A websocket session: ``connected`` until its client left or ended it."""

    def __init__(self) -> None:
        self.connected = True
        self.finished = asyncio.Event()
