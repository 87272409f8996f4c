"""Round trip through a module on this machine: 640x360 JPEGs sent by the client SDK to a
``torchstream module`` process (one identity stage), results back to the client.

    python3 benchmarks/transport_roundtrip.py [--images 2000] [--window 1 64] [--record]

For each transport (ipc, tcp on 127.0.0.1) and each window (requests in flight at once) it
reports messages/s and the latency of each request (sent → its result received) p50/p99.
The module runs in its own process, as in production; the client sends from one thread and
receives on another.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import _paths  # noqa: F401  (first: this folder's http.py must not shadow the stdlib's)
import numpy as np
import torch
from _report import report

from torchstream.client import Sink, Source
from torchstream.sinks import encode_picture
from torchstream.testing import SyntheticVideo

PIPELINE = '''
from torchstream import PipelineSpec, RunConfig


class Identity:
    """Touches nothing: the round trip measures the transport and the runtime."""

    name = "identity"

    def process(self, frames):
        pass


def build(config: RunConfig, options: None) -> PipelineSpec:
    return PipelineSpec(stages=[Identity()])
'''


def run_once(
    folder: Path, transport: str, images: int, window: int, jpeg: bytes
) -> tuple[float, float, float]:
    """(messages/s, p50 ms, p99 ms) for one module process."""
    if transport == "ipc":
        inbound, outbound = f"ipc://{folder}/in-{window}", f"ipc://{folder}/out-{window}"
    else:
        base = 47000 + window
        inbound, outbound = f"tcp://127.0.0.1:{base}", f"tcp://127.0.0.1:{base + 100}"
    module = subprocess.Popen(
        [sys.executable, "-m", "torchstream.cli", "module", str(folder / "identity.py"),
         "--in", f"router+bind:{inbound}", "--out", f"push+bind:{outbound}",
         "--batch-size", "16", "--max-wait-ms", "1"],
        stderr=subprocess.PIPE,
    )
    try:
        assert module.stderr is not None
        while b"frames on" not in module.stderr.readline():  # the module is listening
            if module.poll() is not None:
                raise RuntimeError("the module did not start")
        sent_at: dict[int, float] = {}
        latencies: list[float] = []
        room = threading.Semaphore(window)
        done = threading.Event()

        def receive() -> None:
            # Until the end of stream of "bench": the module's last messages are delivered
            # before this socket closes (a reliable sender would otherwise wait for us).
            with Sink(f"pull+connect:{outbound}") as sink:
                while True:
                    result = sink.recv(30)
                    if result.source_id != "bench":
                        continue
                    if result.end_of_stream:
                        return
                    assert result.seq is not None
                    latencies.append(time.perf_counter() - sent_at[result.seq])
                    room.release()
                    if len(latencies) == images:
                        done.set()

        receiver = threading.Thread(target=receive)
        receiver.start()
        with Source(f"dealer+connect:{inbound}") as source:
            for _ in range(10):  # warm-up: the module's first frames pay for set-up
                source.send_image("warm", jpeg)
            source.send_eos("warm")
            time.sleep(0.5)
            started = time.perf_counter()
            for seq in range(images):
                room.acquire()
                sent_at[seq] = time.perf_counter()
                sent = source.send_image("bench", jpeg)
                assert sent.seq == seq
            done.wait(60)
            elapsed = time.perf_counter() - started
            source.send_eos("bench")
        receiver.join()
    finally:
        module.send_signal(signal.SIGTERM)
        module.wait(30)
    ordered = np.sort(np.array(latencies)) * 1000
    return images / elapsed, float(np.percentile(ordered, 50)), float(np.percentile(ordered, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--window", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    picture = SyntheticVideo(width=640, height=360).render(0)
    jpeg = encode_picture(picture.to(torch.uint8), "jpg")
    rows = []
    with tempfile.TemporaryDirectory(prefix="ts-rt-") as directory:
        folder = Path(directory)
        (folder / "identity.py").write_text(PIPELINE)
        for transport in ("ipc", "tcp"):
            for window in args.window:
                rate, p50, p99 = run_once(folder, transport, args.images, window, jpeg)
                rows.append(
                    f"| {transport} | {window} | {rate:,.0f} | {p50:.2f} | {p99:.2f} |"
                )
                print(rows[-1], flush=True)
    report([
        f"### Transport round trip, 640x360 JPEG ({len(jpeg):,} bytes) — "
        f"{platform.node() or 'this machine'} (CPU) — {datetime.date.today().isoformat()}",
        "",
        "Client SDK (blocking Source + Sink) → `torchstream module` process (one identity "
        f"stage) → client; {args.images} images per row. Command: `python3 "
        f"benchmarks/transport_roundtrip.py --images {args.images} --window "
        f"{' '.join(map(str, args.window))} --record`",
        "",
        "| transport | requests in flight | messages/s | latency p50 (ms) | latency p99 (ms) |",
        "|---|---|---|---|---|",
        *rows,
    ], record=args.record)


if __name__ == "__main__":
    main()
