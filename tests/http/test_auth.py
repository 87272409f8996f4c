"""API keys: every route but health and the documents needs one, compared in constant time."""

from __future__ import annotations

import httpx
import pytest
import websockets.exceptions
import websockets.sync.client
from tests.http._support import Measure, jpeg, running

from torchstream.http import InProcessBackend, ServeConfig, create_app, read_api_keys


@pytest.fixture(scope="module")
def url():
    config = ServeConfig(api_keys=("first-key", "second-key"))
    with running(create_app(InProcessBackend([Measure()]), config, metrics=True)) as base:
        yield base


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic Zmlyc3Qta2V5", "Bearer",
                                    "first-key", "Bearer first-keyX"])
def test_without_a_right_key_401(url, header):
    headers = {"content-type": "image/jpeg"}
    if header is not None:
        headers["authorization"] = header
    reply = httpx.post(f"{url}/v1/infer", content=jpeg(), headers=headers)
    assert reply.status_code == 401
    assert reply.headers["www-authenticate"] == "Bearer"
    assert "API key" in reply.json()["error"]
    for path in ("/v1/status", "/v1/jobs/x", "/metrics"):
        assert httpx.get(f"{url}{path}", headers={"authorization": header or ""}).status_code \
            == 401, path


@pytest.mark.parametrize("key", ["first-key", "second-key"])
def test_every_configured_key_works(url, key):
    reply = httpx.post(f"{url}/v1/infer", content=jpeg(),
                       headers={"content-type": "image/jpeg", "authorization": f"Bearer {key}"})
    assert reply.status_code == 200


def test_health_and_documents_need_no_key(url):
    for path in ("/healthz", "/readyz", "/openapi.json", "/docs"):
        assert httpx.get(f"{url}{path}").status_code == 200, path


def test_websocket_needs_a_key(url):
    ws_url = url.replace("http", "ws") + "/v1/stream?source_id=cam"
    with pytest.raises(websockets.exceptions.InvalidStatus):
        websockets.sync.client.connect(ws_url, open_timeout=10)
    with websockets.sync.client.connect(
        ws_url, additional_headers={"Authorization": "Bearer second-key"}, open_timeout=10
    ) as ws:
        ws.send(jpeg())
        assert '"type": "result"' in ws.recv(timeout=10)


def test_key_file(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# operators\nalpha\n\n  beta  \n")
    assert read_api_keys(path) == ("alpha", "beta")
    path.write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="no API key"):
        read_api_keys(path)
    with pytest.raises(ValueError, match="api_keys"):
        ServeConfig(api_keys=(" spaced",))
