"""The sources API of a running pipeline: list, add, remove while others run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from tests.http._support import Measure, running
from tests.http.test_cli_serve import _free_port

from torchstream.http import create_control_app
from torchstream.pipeline import Pipeline
from torchstream.sinks import CallbackSink
from torchstream.testing import SyntheticVideo, write_video


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return write_video(tmp_path / "clip.mkv", SyntheticVideo(width=320, height=192), 40)


def _wait(predicate, timeout_seconds: float = 20) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_add_list_and_remove_sources(clip: Path, tmp_path: Path) -> None:
    frames = []
    with Pipeline([Measure()], [CallbackSink(frames.append)]) as pipeline, \
            running(create_control_app(pipeline, api_keys=("k",)), ready=False) as url:
        auth = {"authorization": "Bearer k"}
        assert httpx.get(f"{url}/v1/sources").status_code == 401
        assert httpx.get(f"{url}/v1/sources", headers=auth).json() == {"sources": []}
        added = httpx.put(f"{url}/v1/sources/cam-1", json={"uri": str(clip)}, headers=auth)
        assert added.status_code == 201, added.text
        assert added.json()["source_id"] == "cam-1"
        again = httpx.put(f"{url}/v1/sources/cam-1", json={"uri": str(clip)}, headers=auth)
        assert again.status_code in (201, 409)  # 409 while it still runs
        _wait(lambda: sum(f.source_id == "cam-1" for f in frames) >= 40)
        listed = httpx.get(f"{url}/v1/sources", headers=auth).json()["sources"]
        assert [s["source_id"] for s in listed] == ["cam-1"]
        one = httpx.get(f"{url}/v1/sources/cam-1", headers=auth).json()
        assert one["frames_out"] >= 40 and one["errors"] == []
        bad = httpx.put(f"{url}/v1/sources/cam-2", json={"uri": "rtsp://"}, headers=auth)
        assert bad.status_code == 422, bad.text
        assert httpx.put(f"{url}/v1/sources/cam-3", json={}, headers=auth).status_code == 422
        assert httpx.get(f"{url}/v1/sources/nope", headers=auth).status_code == 404
        assert httpx.delete(f"{url}/v1/sources/nope", headers=auth).status_code == 404
        removed = httpx.delete(f"{url}/v1/sources/cam-1", headers=auth)
        assert removed.status_code == 200 and removed.json()["removed"] is True
        assert httpx.get(f"{url}/healthz").status_code == 200


def test_removing_a_source_ends_its_session_while_another_runs(tmp_path: Path) -> None:
    long_clip = write_video(tmp_path / "long.mkv", SyntheticVideo(width=320, height=192), 400)
    ended = []

    class Ends(CallbackSink):
        def end_session(self, session):  # type: ignore[no-untyped-def]
            ended.append((session.source_id, session.end_reason))

    frames = []
    with Pipeline([Measure()], [Ends(frames.append)]) as pipeline, \
            running(create_control_app(pipeline), ready=False) as url:
        for name in ("a", "b"):
            assert httpx.put(f"{url}/v1/sources/{name}",
                             json={"uri": str(long_clip)}).status_code == 201
        _wait(lambda: sum(f.source_id == "a" for f in frames) >= 5)
        assert httpx.delete(f"{url}/v1/sources/a", timeout=60).json()["drained"] is True
        assert ("a", "closed") in ended
        count = sum(f.source_id == "b" for f in frames)
        _wait(lambda: sum(f.source_id == "b" for f in frames) > count)  # b goes on
        assert "a" not in pipeline.sources() and "b" in pipeline.sources()


@pytest.mark.slow
def test_run_with_a_control_port_serves_until_sigterm(clip: Path, tmp_path: Path) -> None:
    port = _free_port()
    meta = tmp_path / "out.jsonl"
    with subprocess.Popen(
        [sys.executable, "-m", "torchstream.cli", "run", "faces", "--control-port", str(port),
         "--meta", str(meta), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    ) as process:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert process.poll() is None, process.stderr.read().decode()  # type: ignore
            try:
                return httpx.get(f"{url}/healthz").status_code == 200
            except httpx.ConnectError:
                return False

        _wait(up, 60)
        assert httpx.put(f"{url}/v1/sources/cam", json={"uri": str(clip)}).status_code == 201
        _wait(lambda: httpx.get(f"{url}/v1/sources/cam").json()["frames_out"] >= 40, 60)
        assert process.poll() is None  # the input ended; the run goes on
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, process.stderr.read().decode()  # type: ignore
    assert meta.read_text().count("\n") == 40
