"""Jobs: 202 at once, the result later, kept for a bounded time, count and memory."""

from __future__ import annotations

import time

import httpx
import pytest
from tests.http._support import Measure, jpeg, running

from torchstream.http import InProcessBackend, ServeConfig, create_app
from torchstream.http._jobs import JobStore


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_store_expires_finished_jobs_after_their_ttl():
    clock = FakeClock()
    store = JobStore(max_jobs=10, max_result_bytes=1000, ttl_seconds=5, clock=clock)
    done, failed, waiting = store.create(), store.create(), store.create()
    assert done and failed and waiting and len({done.id, failed.id, waiting.id}) == 3
    store.finish(done, b'{"x": 1}')
    store.fail(failed, 422, "bad image")
    clock.now = 4.9
    assert store.get(done.id) is done and store.get(failed.id) is failed
    clock.now = 5.0
    assert store.get(done.id) is None and store.get(failed.id) is None
    assert store.get(waiting.id) is waiting  # unfinished jobs never expire
    assert store.result_bytes == 0 and store.pending == 1


def test_store_bounds_count_and_bytes_oldest_finished_first():
    store = JobStore(max_jobs=3, max_result_bytes=10, ttl_seconds=60, clock=FakeClock())
    a, b = store.create(), store.create()
    assert a and b
    store.finish(a, b"123456")
    store.finish(b, b"123456")  # 12 bytes > 10: a goes
    assert store.get(a.id) is None and store.get(b.id) is b
    c, d = store.create(), store.create()
    assert c and d and len(store) == 3
    e = store.create()  # full: the oldest finished (b) makes room
    assert e and store.get(b.id) is None
    assert store.create() is None  # c, d, e unfinished fill it: refused
    with pytest.raises(RuntimeError, match="finished twice"):
        store.finish(b, b"x")


def _wait_done(url: str, href: str) -> dict:
    deadline = time.monotonic() + 10
    while (body := httpx.get(f"{url}{href}").json())["status"] == "pending":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return body


def test_jobs_over_http():
    app = create_app(InProcessBackend([Measure()]), ServeConfig(job_ttl_seconds=0.5))
    with running(app) as url:
        reply = httpx.post(f"{url}/v1/jobs", content=jpeg(50, 40),
                           headers={"content-type": "image/jpeg"})
        assert reply.status_code == 202, reply.text
        accepted = reply.json()
        assert accepted["status"] == "pending"
        assert reply.headers["location"] == accepted["href"] == f"/v1/jobs/{accepted['id']}"
        body = _wait_done(url, accepted["href"])
        assert body["status"] == "done"
        assert body["result"]["width"] == 50 and body["result"]["objects"][0]["label"] == "thing"
        assert body["created_at_seconds"] > 1.7e9

        truncated = jpeg()[: jpeg().index(b"\xff\xda")]
        failing = httpx.post(f"{url}/v1/jobs", content=truncated,
                             headers={"content-type": "image/jpeg"}).json()
        body = _wait_done(url, failing["href"])
        assert body["status"] == "failed"
        assert body["error"]["status"] == 422 and "does not decode" in body["error"]["error"]

        # Bad requests are answered at once, no job made.
        assert httpx.post(f"{url}/v1/jobs", content=b"zzz",
                          headers={"content-type": "image/jpeg"}).status_code == 415

        time.sleep(0.6)  # past the TTL
        gone = httpx.get(f"{url}{accepted['href']}")
        assert gone.status_code == 404 and "expired" in gone.json()["error"]
        assert httpx.get(f"{url}/v1/jobs/nope").status_code == 404
