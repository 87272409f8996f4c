"""Start-up, readiness, a pipeline that fails to start, and a module behind the front end."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence

import httpx
import pytest
import torch
import websockets.sync.client
from tests.http._support import Measure, jpeg, running

from torchstream.frame import Frame
from torchstream.http import InProcessBackend, ModuleBackend, ServeConfig, create_app


class SlowSetup(Measure):
    """Loads its 'model' only when the test says so."""

    def __init__(self) -> None:
        self.may_load = threading.Event()

    def setup(self, device: torch.device) -> None:
        assert self.may_load.wait(30)


class BrokenSetup(Measure):
    def setup(self, device: torch.device) -> None:
        raise RuntimeError("weights file is missing")


class FailsOnWarmup(Measure):
    def process(self, frames: Sequence[Frame]) -> None:
        raise RuntimeError("this model cannot run")


def test_ready_only_when_the_models_are_loaded_and_warm():
    stage = SlowSetup()
    with running(create_app(InProcessBackend([stage])), ready=False) as url:
        assert httpx.get(f"{url}/healthz").status_code == 200  # alive while loading
        readyz = httpx.get(f"{url}/readyz")
        assert readyz.status_code == 503 and "loading the models" in readyz.json()["reason"]
        refused = httpx.post(f"{url}/v1/infer", content=jpeg(),
                             headers={"content-type": "image/jpeg"})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"].startswith("not ready")
        stage.may_load.set()
        deadline = time.monotonic() + 20
        while httpx.get(f"{url}/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert httpx.post(f"{url}/v1/infer", content=jpeg(),
                          headers={"content-type": "image/jpeg"}).status_code == 200


@pytest.mark.parametrize(
    ("stage", "words"),
    [(BrokenSetup(), "weights file is missing"), (FailsOnWarmup(), "warm-up failed")],
)
def test_a_pipeline_that_cannot_start_is_reported(stage, words):
    failures: list[BaseException] = []
    app = create_app(InProcessBackend([stage]), on_start_failure=failures.append)
    with running(app, ready=False) as url:
        deadline = time.monotonic() + 20
        while not failures:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert words in str(failures[0])
        health = httpx.get(f"{url}/healthz")
        assert health.status_code == 503 and words in health.json()["reason"]
        assert httpx.get(f"{url}/readyz").status_code == 503


def test_serving_through_a_module(tmp_path):
    pytest.importorskip("zmq", reason="pip install 'torchstream[transport]'")
    from torchstream.transport import Module

    module = Module([Measure()], inbound=f"router+bind:ipc://{tmp_path}/in",
                    outbound=f"push+bind:ipc://{tmp_path}/out", drain_timeout_seconds=3)
    thread = threading.Thread(target=module.run, name="test/module")
    thread.start()
    try:
        assert module.ready.wait(10)
        backend = ModuleBackend(f"dealer+connect:ipc://{tmp_path}/in",
                                f"pull+connect:ipc://{tmp_path}/out")
        with running(create_app(backend, ServeConfig(deadline_seconds=20))) as url:
            traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            reply = httpx.post(f"{url}/v1/infer", content=jpeg(40, 30), timeout=30,
                               headers={"content-type": "image/jpeg",
                                        "traceparent": traceparent})
            assert reply.status_code == 200, reply.text
            body = reply.json()
            assert body["width"] == 40 and body["objects"][0]["label"] == "thing"
            assert body["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
            assert body["timings"]["pipeline_ms"] is None
            with websockets.sync.client.connect(
                url.replace("http://", "ws://") + "/v1/stream?source_id=cam", open_timeout=10
            ) as ws:
                for _ in range(5):
                    ws.send(jpeg())
                ws.send(json.dumps({"end": True}))
                messages = [json.loads(ws.recv(timeout=20)) for _ in range(6)]
            assert [m.get("seq") for m in messages[:5]] == [0, 1, 2, 3, 4]
            assert [m["attributes"]["in_session"] for m in messages[:5]] == [1, 2, 3, 4, 5]
            assert messages[5]["type"] == "end"
            status = httpx.get(f"{url}/v1/status").json()
            assert status["pipeline"]["matcher"]["matched"] >= 7
    finally:
        module.stop()
        thread.join(30)
