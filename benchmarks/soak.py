"""Soak: N live RTSP streams through a pipeline for a while, with the server killed at random.

    python3 benchmarks/soak.py [--streams 8] [--minutes 5] [--restart-every-seconds 40] [--record]

Runs GStreamer's RTSP server (``torchstream.testing.RtspTestServer``; Debian packages in its
docs) on 127.0.0.1 serving live test patterns (H.264 and HEVC, 320x240 at 25 fps), and a
CPU pipeline (no stage, or with ``--detector`` the toy detector in batches of 8) reading
``--streams`` LiveSources from it, half of each codec. At random moments (exponential, mean
``--restart-every-seconds``) the server is killed with SIGKILL and started again 0.5-3 s
later. Every ``--sample-seconds`` it prints frames out, drops, reconnects, lag p99 (worst
source), RSS and OS thread count. Healthy means: every stream reconnected after every
restart, frames keep flowing, lag stays bounded, RSS and threads flat after warm-up.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import sys
import threading
import time

import _paths  # noqa: F401  (first: this folder's http.py must not shadow the stdlib's)
from _report import report

from torchstream import BatchPolicy, Pipeline
from torchstream.sources import LiveSource
from torchstream.testing import RectangleDetector, RtspTestServer, rtsp_server_missing


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--restart-every-seconds", type=float, default=40.0)
    parser.add_argument("--sample-seconds", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--detector", action="store_true",
                        help="run the toy detector (CPU-heavy) instead of no stage")
    parser.add_argument("--record", action="store_true", help="append to RESULTS.md")
    args = parser.parse_args()
    missing = rtsp_server_missing()
    if missing:
        sys.exit(missing)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    print(f"seed {seed}", flush=True)
    stop = threading.Event()
    restarts = 0

    def chaos(server: RtspTestServer) -> None:
        nonlocal restarts
        while not stop.wait(rng.expovariate(1 / args.restart_every_seconds)):
            server.kill()
            if stop.wait(rng.uniform(0.5, 3.0)):
                break
            server.start()
            restarts += 1

    stages = (
        [RectangleDetector(batch_policy=BatchPolicy(max_size=8, max_wait_seconds=0.01))]
        if args.detector else []
    )
    rows: list[str] = []
    started = time.monotonic()
    with RtspTestServer() as server, Pipeline(stages) as pipeline:
        for index in range(args.streams):
            mount = "/h264" if index % 2 == 0 else "/hevc"
            pipeline.add_source(LiveSource(
                server.url(mount), source_id=f"cam{index}", read_timeout_seconds=2.0,
                open_timeout_seconds=3.0, backoff_max_seconds=4.0,
            ))
        monkey = threading.Thread(target=chaos, args=(server,), name="ts/soak/chaos")
        monkey.start()
        try:
            while not stop.wait(args.sample_seconds):
                elapsed = time.monotonic() - started
                stats = pipeline.statistics()
                sources = stats.sources.values()
                lags = [s.lag_seconds_p99 for s in sources if s.lag_seconds_p99 is not None]
                live = [s.live for s in sources if s.live is not None]
                row = (
                    f"| {elapsed:6.0f} | {restarts} | {stats.frames_out} | "
                    f"{stats.dropped_total} | {sum(x.frames_skipped for x in live)} | "
                    f"{min(x.reconnects for x in live)}-{max(x.reconnects for x in live)} | "
                    f"{sum(x.connected for x in live)}/{len(live)} | "
                    f"{max(lags, default=0.0):.3f} | {rss_mib():.0f} | {os_threads()} |"
                )
                rows.append(row)
                print(row, flush=True)
                if elapsed >= args.minutes * 60:
                    stop.set()
        finally:
            stop.set()
            monkey.join()
    report([
        f"### Soak: live RTSP sources, server killed at random — {platform.node()} "
        f"({os.cpu_count()} cores) — {datetime.date.today().isoformat()}",
        "",
        f"{args.minutes} min, {args.streams} LiveSources (320x240 25 fps, H.264/HEVC, PyAV on "
        f"the CPU) through {'the toy detector' if args.detector else 'no stage'}; "
        f"server SIGKILLed every ~"
        f"{args.restart_every_seconds:.0f} s (exponential; seed {seed}), down 0.5-3 s. "
        "Reconnects: fewest-most per source; lag: worst source's p99 (last 256 frames).",
        "",
        "| seconds | restarts | frames out | dropped | skipped | reconnects | connected | "
        "lag p99 (s) | RSS (MiB) | OS threads |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ], record=args.record)


if __name__ == "__main__":
    main()
