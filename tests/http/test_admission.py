"""Admission control, deadlines, bursts and draining: every request gets an answer."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time

import httpx
import pytest
from tests.http._support import Gate, Slow, jpeg, running

from torchstream.http import Admission, InProcessBackend, ServeConfig, create_app


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_admission_bounds_in_flight_and_measures_the_rate():
    clock = FakeClock()
    admission = Admission(2, clock=clock)
    assert admission.try_enter() and admission.try_enter()
    assert not admission.try_enter()
    assert admission.retry_after_seconds() == 1.0  # nothing measured yet
    for _ in range(20):  # 20 served in 2 s: 10 per second
        clock.now += 0.1
        admission.leave(served=True)
        assert admission.try_enter()
    assert admission.service_rate() == pytest.approx(10.0, rel=0.1)
    assert admission.retry_after_seconds() == pytest.approx(0.2, rel=0.1)  # 2 in flight
    assert admission.retry_after_header() == "1"  # whole seconds, at least 1
    # 1 in flight takes 0.1 s at 10 per second: a request due within 0.05 s would miss it.
    admission.leave(served=False)
    assert not admission.try_enter(within_seconds=0.05)
    assert admission.try_enter(within_seconds=1.0)
    clock.now += 30  # old completions stop counting
    assert admission.service_rate() == 0.0
    stats = admission.statistics()
    assert (stats.in_flight, stats.rejected_total, stats.completed_total) == (2, 2, 20)
    admission.leave(served=False)
    admission.leave(served=False)
    with pytest.raises(RuntimeError):
        admission.leave(served=False)
    with pytest.raises(ValueError, match="max_in_flight"):
        Admission(0)


def test_idle_time_does_not_count_against_the_rate():
    clock = FakeClock()
    admission = Admission(100, clock=clock)
    for _ in range(5):  # one request every 2 s, each served in 0.1 s
        assert admission.try_enter()
        clock.now += 0.1
        admission.leave(served=True)
        clock.now += 1.9
    assert admission.service_rate() == pytest.approx(10.0, rel=0.01)  # not 0.5 per second


def _post(url: str, **params: float) -> httpx.Response:
    return httpx.post(f"{url}/v1/infer", params=params, content=jpeg(),
                      headers={"content-type": "image/jpeg"}, timeout=60)


def test_past_max_in_flight_the_answer_is_an_immediate_429():
    gate = Gate()
    app = create_app(InProcessBackend([gate]), ServeConfig(max_in_flight=2))
    with running(app) as url, concurrent.futures.ThreadPoolExecutor(4) as pool:
        held = [pool.submit(_post, url) for _ in range(2)]
        assert gate.entered.acquire(timeout=10)  # the first is inside the stage
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/v1/status").json()["admission"]["in_flight"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        started = time.monotonic()
        refused = _post(url)
        took = time.monotonic() - started
        assert refused.status_code == 429, refused.text
        assert took < 1.0  # at once, not after the held ones
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["retry_after_seconds"] > 0
        gate.release()
        assert [f.result().status_code for f in held] == [200, 200]
        assert _post(url).status_code == 200


def test_deadline_answers_504_and_drops_frames_no_stage_started():
    gate = Gate()
    backend = InProcessBackend([gate])
    with running(create_app(backend, ServeConfig(max_in_flight=8))) as url, \
            concurrent.futures.ThreadPoolExecutor(4) as pool:
        first = pool.submit(_post, url, deadline_seconds=0.5)
        assert gate.entered.acquire(timeout=10)  # started: it will be computed anyway
        second = pool.submit(_post, url, deadline_seconds=0.5)  # waits behind it
        assert first.result().status_code == 504
        reply = second.result()
        assert reply.status_code == 504
        assert "deadline" in reply.json()["error"]
        gate.release()
        assert backend.pipeline is not None
        deadline = time.monotonic() + 10
        while backend.pipeline.statistics().dropped.get("deadline", 0) < 1:
            assert time.monotonic() < deadline, backend.pipeline.statistics()
            time.sleep(0.01)
        assert gate.started == 1  # the second never reached the stage
        status = httpx.get(f"{url}/v1/status").json()
        assert status["deadline_expired_total"] == 2
        assert status["admission"]["in_flight"] == 0
        assert _post(url).status_code == 200  # and it serves on


async def _burst(url: str, count: int) -> list[int | str]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        body = jpeg()

        async def one() -> int | str:
            try:
                reply = await client.post("/v1/infer", content=body,
                                          headers={"content-type": "image/jpeg"})
            except httpx.HTTPError as exc:
                return type(exc).__name__
            if reply.status_code in (429, 503):
                assert int(reply.headers["retry-after"]) >= 1
            return reply.status_code

        return await asyncio.gather(*(one() for _ in range(count)))


@pytest.mark.slow
def test_a_burst_gets_an_answer_for_every_request():
    stage = Slow(0.02, size=4)
    app = create_app(InProcessBackend([stage]),
                     ServeConfig(max_in_flight=8, deadline_seconds=5.0))
    with running(app) as url:
        started = time.monotonic()
        answers = asyncio.run(_burst(url, 300))
        took = time.monotonic() - started
    assert len(answers) == 300
    unexpected = [a for a in answers if a not in (200, 429, 503, 504)]
    assert not unexpected, unexpected  # no resets, no hangs, no other statuses
    assert answers.count(200) >= 8
    assert answers.count(429) > 0
    assert took < 60


def test_stopping_answers_the_requests_in_flight():
    gate = Gate()
    backend = InProcessBackend([gate])
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        with running(create_app(backend)) as url:
            held = pool.submit(_post, url)
            assert gate.entered.acquire(timeout=10)
            # Leaving the block stops the server while the request is inside the pipeline;
            # the gate opens shortly after, so the drain finishes it.
            pool.submit(lambda: (time.sleep(0.5), gate.release()))
        assert held.result().status_code == 200
    assert backend.pipeline is None  # the pipeline was closed at shutdown
