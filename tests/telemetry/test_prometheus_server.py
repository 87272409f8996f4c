"""A real Prometheus server (Debian's ``prometheus`` package) scrapes a pipeline's metrics
endpoint and the HTTP front end's ``/metrics`` on 127.0.0.1; the series it stores move as
frames and requests flow. The server runs on a free local port with its own temporary
storage and is stopped afterwards."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("prometheus_client", reason="pip install 'torchstream[telemetry]'")

from torchstream import BatchPolicy, Pipeline
from torchstream.sinks import CallbackSink
from torchstream.telemetry import serve_metrics
from torchstream.testing import RectangleDetector, SyntheticSource, SyntheticVideo

SCRAPE_INTERVAL = "500ms"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def prometheus_binary() -> str:
    """The ``prometheus`` binary; installs Debian's package when it is missing and we are
    root, skips otherwise."""
    found = shutil.which("prometheus")
    if found:
        return found
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("needs the Prometheus server: apt-get install prometheus (Debian package "
                    "'prometheus'), as root")
    # Keep the package's own service from starting: in a container there is no systemd to
    # start it anyway, and on a real host our server must not depend on (or fight) it.
    policy = Path("/usr/sbin/policy-rc.d")
    ours = not policy.exists()
    if ours:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        done = subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            capture_output=True, timeout=600, check=False,
        )
    finally:
        if ours:
            policy.unlink()
    found = shutil.which("prometheus")
    if done.returncode != 0 or not found:
        pytest.skip(f"apt-get install prometheus failed: {done.stderr.decode()[-500:]}")
    return found


class PrometheusServer:
    """One Prometheus process on 127.0.0.1; :meth:`scrape` adds a target (the configuration
    is rewritten and reloaded through ``/-/reload``), :meth:`query` runs an instant query."""

    def __init__(self, binary: str, directory: Path) -> None:
        self._directory = directory
        self._config = directory / "prometheus.yml"
        self._jobs: dict[str, dict[str, Any]] = {}
        self._write_config()
        self.url = f"http://127.0.0.1:{free_port()}"
        self._process = subprocess.Popen(
            [binary, f"--config.file={self._config}",
             f"--web.listen-address={self.url.removeprefix('http://')}",
             f"--storage.tsdb.path={directory / 'data'}", "--web.enable-lifecycle",
             "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        self._wait(lambda: self._get("/-/ready")[0] == 200, "Prometheus never became ready")

    def _write_config(self) -> None:
        # JSON is YAML: no YAML library needed.
        self._config.write_text(json.dumps({
            "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL,
                       "evaluation_interval": "10s"},
            "scrape_configs": list(self._jobs.values()),
        }))

    def _get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return 0, b""

    def _wait(self, check: Callable[[], bool], message: str, timeout_seconds: float = 30) -> None:
        deadline = time.monotonic() + timeout_seconds
        while not check():
            if self._process.poll() is not None:
                stderr = self._process.stderr.read().decode()  # type: ignore[union-attr]
                raise AssertionError(f"Prometheus exited: {stderr[-2000:]}")
            assert time.monotonic() < deadline, message
            time.sleep(0.1)

    def scrape(self, job: str, port: int, *, bearer_token: str | None = None) -> None:
        """Scrape ``http://127.0.0.1:<port>/metrics`` as ``job`` from now on."""
        config: dict[str, Any] = {
            "job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
        }
        if bearer_token is not None:
            credentials = self._directory / f"{job}.token"
            credentials.write_text(bearer_token)
            config["authorization"] = {"type": "Bearer", "credentials_file": str(credentials)}
        self._jobs[job] = config
        self._write_config()
        request = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert reply.status == 200

    def query(self, expression: str) -> list[tuple[dict[str, str], float]]:
        """An instant query: (labels, value) per series."""
        status, body = self._get(f"/api/v1/query?{urllib.parse.urlencode({'query': expression})}")
        assert status == 200, body
        answer = json.loads(body)
        assert answer["status"] == "success", answer
        return [(item["metric"], float(item["value"][1])) for item in answer["data"]["result"]]

    def value(self, expression: str) -> float | None:
        """The value of a query that gives one series, None while it gives none."""
        result = self.query(expression)
        assert len(result) <= 1, result
        return result[0][1] if result else None

    def wait_for(self, expression: str, check: Callable[[float], bool],
                 timeout_seconds: float = 20) -> float:
        """Query until the value passes ``check``; returns it."""
        seen: list[float | None] = []

        def passes() -> bool:
            seen.append(self.value(expression))
            return seen[-1] is not None and check(seen[-1])

        self._wait(passes, f"{expression}: last values {seen[-5:]}", timeout_seconds)
        result = seen[-1]
        assert result is not None
        return result

    def close(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stderr is not None:
            self._process.stderr.close()


@pytest.fixture(scope="module")
def prometheus() -> Iterator[PrometheusServer]:
    binary = prometheus_binary()
    with tempfile.TemporaryDirectory(prefix="ts-prometheus-") as directory:
        server = PrometheusServer(binary, Path(directory))
        try:
            yield server
        finally:
            server.close()


def test_prometheus_scrapes_a_running_pipeline(prometheus: PrometheusServer) -> None:
    detector = RectangleDetector(batch_policy=BatchPolicy(max_size=4, max_wait_seconds=0.005))
    video = SyntheticVideo(width=96, height=64)
    with Pipeline([detector], [CallbackSink(lambda frame: None)]) as pipeline:
        server = serve_metrics(pipeline, port=0)
        try:
            prometheus.scrape("pipeline", server.port)
            # Live-camera pace: 50 frames/s for as long as the test needs.
            pipeline.add_source(SyntheticSource("cam", frames=100_000, video=video,
                                                interval_seconds=0.02))
            frames_out = 'torchstream_frames_out_total{job="pipeline",source="cam"}'
            first = prometheus.wait_for(frames_out, lambda v: v > 0)
            later = prometheus.wait_for(frames_out, lambda v: v > first)
            assert later > first
            assert prometheus.value('up{job="pipeline"}') == 1
            assert prometheus.wait_for(
                'torchstream_stage_frames_total{job="pipeline",stage="rectangles"}',
                lambda v: v >= later,
            ) >= later
            assert prometheus.value(
                'torchstream_source_frames_per_second{job="pipeline",source="cam"}'
            ) == pytest.approx(50, rel=0.5)
        finally:
            server.close()  # the pipeline's exit stops the source


def test_prometheus_scrapes_the_http_front_end_with_its_api_key(
    prometheus: PrometheusServer,
) -> None:
    pytest.importorskip("fastapi", reason="pip install 'torchstream[http]'")
    import httpx
    from tests.http._support import Measure, jpeg, running

    from torchstream.http import InProcessBackend, ServeConfig, create_app

    key = "scrape-key"
    app = create_app(InProcessBackend([Measure()]), ServeConfig(api_keys=(key,)), metrics=True)
    with running(app) as url:
        prometheus.scrape("http", int(url.rsplit(":", 1)[1]), bearer_token=key)
        prometheus.wait_for('up{job="http"}', lambda v: v == 1)
        headers = {"content-type": "image/jpeg", "authorization": f"Bearer {key}"}
        requests = 'torchstream_http_requests_total{job="http",route="/v1/infer",status="200"}'
        for more, total in ((3, 3), (5, 8)):  # the series appears, then moves
            for _ in range(more):
                assert httpx.post(f"{url}/v1/infer", content=jpeg(), headers=headers,
                                  timeout=10).status_code == 200
            assert prometheus.wait_for(requests, lambda v, n=total: v >= n) == total
        # Without the key the same target is down: the key is what let Prometheus in.
        prometheus.scrape("http", int(url.rsplit(":", 1)[1]), bearer_token="wrong-key")
        prometheus.wait_for('up{job="http"}', lambda v: v == 0)
