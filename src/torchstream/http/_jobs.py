"""Jobs: requests answered later. Kept for a bounded time, count and memory."""

from __future__ import annotations

import collections
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Job", "JobStore"]

JobState = Literal["pending", "done", "failed"]


@dataclass(eq=False)
class Job:
    id: str
    created_seconds: float
    """Wall-clock time of the request (``time.time()``)."""
    state: JobState = "pending"
    result: bytes | None = None
    """The result's JSON, once done."""
    error_status: int | None = None
    error: str | None = None
    finished_monotonic: float | None = field(default=None, repr=False)


class JobStore:
    """Jobs by id. Finished jobs are forgotten ``ttl_seconds`` after they finished, and the
    oldest finished ones go early when more than ``max_jobs`` exist or their results hold
    more than ``max_result_bytes``. :meth:`create` returns None when unfinished jobs alone
    fill ``max_jobs`` (the caller answers 429). Ids are random (unguessable)."""

    def __init__(
        self,
        *,
        max_jobs: int,
        max_result_bytes: int,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_jobs = max_jobs
        self._max_bytes = max_result_bytes
        self._ttl = ttl_seconds
        self._clock = clock
        self._jobs: dict[str, Job] = {}
        self._finished: collections.deque[Job] = collections.deque()  # in finishing order
        self._bytes = 0
        self._pending = 0
        self.evicted_total = 0

    def create(self) -> Job | None:
        self._expire()
        if self._pending >= self._max_jobs:
            return None
        while len(self._jobs) >= self._max_jobs and self._finished:
            self._forget(self._finished[0])
        job = Job(id=secrets.token_urlsafe(16), created_seconds=time.time())
        self._jobs[job.id] = job
        self._pending += 1
        return job

    def finish(self, job: Job, result: bytes) -> None:
        job.result = result
        self._bytes += len(result)
        self._close(job, "done")
        while self._bytes > self._max_bytes and len(self._finished) > 1:
            self._forget(self._finished[0])

    def fail(self, job: Job, status: int, message: str) -> None:
        job.error_status, job.error = status, message
        self._close(job, "failed")

    def get(self, job_id: str) -> Job | None:
        self._expire()
        return self._jobs.get(job_id)

    def __len__(self) -> int:
        return len(self._jobs)

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def result_bytes(self) -> int:
        return self._bytes

    def _close(self, job: Job, state: JobState) -> None:
        if job.state != "pending":
            raise RuntimeError(f"job {job.id} finished twice")
        job.state = state
        job.finished_monotonic = self._clock()
        self._pending -= 1
        if job.id in self._jobs:
            self._finished.append(job)

    def _expire(self) -> None:
        now = self._clock()
        while self._finished:
            job = self._finished[0]
            assert job.finished_monotonic is not None
            if now - job.finished_monotonic < self._ttl:
                break
            self._forget(job)

    def _forget(self, job: Job) -> None:
        self._finished.popleft()
        if self._jobs.pop(job.id, None) is not None and job.result is not None:
            self._bytes -= len(job.result)
        self.evicted_total += 1
