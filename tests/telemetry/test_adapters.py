"""The source and sink adapters' metrics endpoints (``--metrics-port``), scraped from real
`torchstream source` / `torchstream sink` processes while they run."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("zmq", reason="needs pyzmq: pip install 'torchstream[transport]'")
pytest.importorskip("prometheus_client", reason="pip install 'torchstream[telemetry]'")

from prometheus_client.parser import text_string_to_metric_families

from torchstream import Frame
from torchstream.testing import SyntheticVideo, write_video
from torchstream.transport import (
    EndOfStreamAck,
    FrameMessage,
    Receiver,
    ResultAck,
    ResultMessage,
    Sender,
)

Samples = dict[str, list[tuple[dict[str, str], float]]]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(port: int) -> Samples:
    status, body = get(port, "/metrics")
    assert status == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    matches = [v for lab, v in samples.get(name, []) if all(lab.get(k) == x
                                                             for k, x in labels.items())]
    assert len(matches) == 1, (name, labels, samples.get(name))
    return matches[0]


def wait_for(port: int, check: Callable[[Samples], bool], timeout_seconds: float = 30) -> Samples:
    """Scrape until ``check`` holds (the endpoint may not be up yet)."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            samples = scrape(port)
            if check(samples):
                return samples
        except (OSError, AssertionError):
            samples = {}
        assert time.monotonic() < deadline, f"never true; last scrape: {samples}"
        time.sleep(0.1)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "torchstream.cli", *args]


@contextlib.contextmanager
def process(args: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, proc.stderr.read().decode()  # type: ignore[union-attr]


def test_source_adapter_counts_what_it_sends(tmp_path: Path) -> None:
    clip = write_video(tmp_path / "cam.mkv", SyntheticVideo(width=96, height=64), 10)
    port = free_port()
    with Receiver(f"pull+bind:ipc://{tmp_path}/in") as module, process(
        cli("source", "video", str(clip), "--out", f"push+connect:ipc://{tmp_path}/in",
            "--sync", "--loop", "--streams", "2", "--metrics-port", str(port))
    ) as source:
        received: list[int] = []

        def pull(n: int) -> None:
            while len(received) < n:
                message, _ = module.recv(10)
                assert isinstance(message, FrameMessage)
                received.append(message.seq)

        pull(5)
        first = wait_for(port, lambda s: value(
            s, "torchstream_adapter_messages_sent_total", source="cam.mkv-0") >= 1)
        assert value(first, "torchstream_adapter_sources_sending") == 2
        assert get(port, "/healthz")[0] == 200 and get(port, "/readyz")[0] == 200
        pull(len(received) + 20)  # paced at 30 frames/s: the counters move meanwhile
        later = scrape(port)
        for sid in ("cam.mkv-0", "cam.mkv-1"):
            assert value(later, "torchstream_adapter_messages_sent_total", source=sid) > value(
                first, "torchstream_adapter_messages_sent_total", source=sid)
            assert value(later, "torchstream_adapter_messages_dropped_total", source=sid) == 0
        assert value(later, "torchstream_adapter_source_failures_total", source="cam.mkv-0") == 0
        stop(source)


def test_sink_adapter_counts_results_duplicates_and_acks(tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "results.jsonl"
    with process(cli("sink", "json", str(out), "--in", f"router+bind:ipc://{tmp_path}/out",
                     "--metrics-port", str(port))) as sink:
        wait_for(port, lambda s: get(port, "/readyz")[0] == 200)  # ready: its socket is bound
        with Sender(f"dealer+connect:ipc://{tmp_path}/out") as module:
            for seq in (0, 1, 2, 1):  # 1 again: a re-send whose acknowledgement was lost
                frame = Frame(source_id="cam", seq=seq, width=8, height=8)
                module.send(ResultMessage(frame=frame))
            acks = [module.recv(10)[0] for _ in range(4)]
            assert all(isinstance(a, ResultAck) for a in acks)
            assert isinstance(module.send_eos("cam", last_seq=2), EndOfStreamAck)
        samples = wait_for(port, lambda s: value(
            s, "torchstream_adapter_sources_ended_total") == 1)
        assert value(samples, "torchstream_adapter_results_written_total", source="cam") == 3
        assert value(samples, "torchstream_adapter_duplicates_dropped_total") == 1
        assert value(samples, "torchstream_adapter_acks_sent_total", kind="result") == 4
        assert value(samples, "torchstream_adapter_acks_sent_total", kind="end_of_stream") == 1
        assert value(samples, "torchstream_adapter_messages_received_total") == 5
        assert value(samples, "torchstream_adapter_write_errors_total") == 0
        assert get(port, "/healthz")[0] == 200
        stop(sink)
    assert len(out.read_bytes().splitlines()) == 3


def test_every_adapter_command_takes_the_telemetry_options() -> None:
    from click.testing import CliRunner

    from torchstream.cli import main

    runner = CliRunner()
    for command in (["source", "video"], ["source", "url"], ["source", "camera"],
                    ["source", "images"], ["sink", "json"], ["sink", "images"],
                    ["sink", "video"]):
        result = runner.invoke(main, [*command, "--help"])
        assert result.exit_code == 0, (command, result.output)
        for option in ("--metrics-port", "--metrics-address", "--trace-ratio",
                       "--trace-exporter"):
            assert option in result.output, (command, option)
