"""WS /v1/stream: one session's frames in, results out in order, with session state."""

from __future__ import annotations

import json

import pytest
import websockets.exceptions
import websockets.sync.client
from tests.http._support import Measure, jpeg, png, running

from torchstream.http import InProcessBackend, ServeConfig, create_app


@pytest.fixture(scope="module")
def ws_url():
    config = ServeConfig(max_stream_in_flight=4, max_body_bytes=100_000)
    with running(create_app(InProcessBackend([Measure()]), config)) as base:
        yield base.replace("http://", "ws://") + "/v1/stream"


def _connect(url: str, source_id: str):
    return websockets.sync.client.connect(f"{url}?source_id={source_id}", open_timeout=10,
                                          max_size=None)


def test_results_come_in_order_with_session_state(ws_url):
    with _connect(ws_url, "cam-1") as ws:
        for index in range(30):
            ws.send(jpeg(32 + index, 24) if index % 3 else png(32 + index, 24))
        ws.send(json.dumps({"end": True}))
        messages = [json.loads(ws.recv(timeout=20)) for _ in range(31)]
        with pytest.raises(websockets.exceptions.ConnectionClosedOK):
            ws.recv(timeout=10)
    results, end = messages[:30], messages[30]
    assert [m["type"] for m in results] == ["result"] * 30
    assert [m["index"] for m in results] == list(range(30))
    assert [m["seq"] for m in results] == list(range(30))
    assert [m["width"] for m in results] == [32 + i for i in range(30)]
    assert [m["attributes"]["in_session"] for m in results] == list(range(1, 31))
    assert {m["source_id"] for m in results} == {"cam-1"}
    assert end == {"type": "end", "source_id": "cam-1", "frames": 30}


def test_a_new_connection_is_a_new_session(ws_url):
    for _ in range(2):
        with _connect(ws_url, "cam-2") as ws:
            ws.send(jpeg())
            ws.send(jpeg())
            states = [json.loads(ws.recv(timeout=10))["attributes"]["in_session"]
                      for _ in range(2)]
        assert states == [1, 2]


def test_bad_frames_get_errors_in_their_place(ws_url):
    with _connect(ws_url, "cam-3") as ws:
        ws.send(jpeg())
        ws.send(b"garbage")
        ws.send("what is this")
        ws.send(b"x" * 100_001)
        ws.send(jpeg())
        messages = [json.loads(ws.recv(timeout=10)) for _ in range(5)]
    assert [m["index"] for m in messages] == [0, 1, 2, 3, 4]
    assert [m["type"] for m in messages] == ["result", "error", "error", "error", "result"]
    assert [m.get("status") for m in messages[1:4]] == [415, 400, 413]
    assert messages[4]["seq"] == 1  # rejected frames never reached the pipeline


def test_one_connection_per_source_id_and_ids_are_checked(ws_url):
    with _connect(ws_url, "cam-4") as ws:
        ws.send(jpeg())
        ws.recv(timeout=10)
        with _connect(ws_url, "cam-4") as second, \
                pytest.raises(websockets.exceptions.ConnectionClosedError) as closed:
            second.recv(timeout=10)
        assert closed.value.rcvd.code == 1008
        assert "already streaming" in closed.value.rcvd.reason
    with _connect(ws_url, "bad%20id") as ws, \
            pytest.raises(websockets.exceptions.ConnectionClosedError) as closed:
        ws.recv(timeout=10)
    assert closed.value.rcvd.code == 1008


def test_a_client_that_vanishes_frees_its_session(ws_url):
    with _connect(ws_url, "cam-5") as ws:  # gone with 4 frames in flight
        for _ in range(4):
            ws.send(jpeg())
    with _connect(ws_url, "cam-5") as again:  # the id is free again
        again.send(jpeg())
        assert json.loads(again.recv(timeout=10))["attributes"]["in_session"] == 1
