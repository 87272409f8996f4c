"""``torchstream nats init`` and ``torchstream source video|images … --nats URL``."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from torchstream.cli import main
from torchstream.nats import Layout, connect, decode
from torchstream.nats._connection import close_quietly
from torchstream.nats._wire import decode_keyframe_position
from torchstream.testing import NatsServer
from torchstream.testing._rtsp import free_port


def test_init_is_idempotent_and_refuses_another_partition_count(server: NatsServer) -> None:
    runner = CliRunner()
    first = runner.invoke(main, ["nats", "init", "--nats", server.url, "--partitions", "8",
                                 "--pin-timeout-seconds", "0.5"])
    assert first.exit_code == 0, first.output
    assert "8 partitions" in first.output and "created consumer ts-p7" in first.output
    again = runner.invoke(main, ["nats", "init", "--nats", server.url, "--partitions", "8",
                                 "--pin-timeout-seconds", "0.5"])
    assert again.exit_code == 0 and "0 created, 0 updated" in again.output
    other = runner.invoke(main, ["nats", "init", "--nats", server.url, "--partitions", "16"])
    assert other.exit_code == 1
    assert "maps sources to 8 partitions, the layout asks for 16" in other.output


def test_init_names_an_unreachable_server() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(main, ["nats", "init", "--nats", url])
    assert result.exit_code == 1 and f"cannot reach NATS at {url}" in result.output


async def _read(url: str, layout: Layout) -> list[tuple[str, object]]:
    connection = await connect(url)
    js = connection.jetstream()
    info = await js.stream_info(layout.input_stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        raw = await js.get_msg(layout.input_stream, seq)
        out.append((raw.subject, decode(raw.subject, raw.headers, raw.data)))
    kv = await js.key_value(layout.keyframes_bucket)
    position = decode_keyframe_position((await kv.get("rects_mp4")).value)
    await close_quietly(connection)
    return [*out, ("keyframe", position)]


def test_source_video_publishes_packets_over_nats(server: NatsServer, h264_file: Path) -> None:
    layout = Layout(partitions=4)
    assert CliRunner().invoke(
        main, ["nats", "init", "--nats", server.url, "--partitions", "4"]
    ).exit_code == 0
    # A real process, as deployed; the default source id "rects.mp4" becomes "rects_mp4".
    done = subprocess.run(
        [sys.executable, "-m", "torchstream.cli", "source", "video", str(h264_file),
         "--nats", server.url],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "rects_mp4: 30 packets sent" in done.stdout + done.stderr
    *stored, (_, position) = asyncio.run(_read(server.url, layout))
    frames = [d.message for _, d in stored]
    assert [f.seq for f in frames[:-1]] == list(range(30))
    assert frames[-1].last_seq == 29  # the end of stream, last
    assert frames[0].keyframe and frames[0].payload.codec == "h264"
    assert {s for s, _ in stored} == {
        layout.partition_subject(layout.partition_of("rects_mp4"), "rects_mp4")
    }
    assert position.seq == max(f.seq for f in frames[:-1] if f.keyframe)


def test_source_needs_exactly_one_destination(server: NatsServer, h264_file: Path) -> None:
    runner = CliRunner()
    neither = runner.invoke(main, ["source", "video", str(h264_file)])
    assert neither.exit_code == 2 and "one of --out ENDPOINT" in neither.output
    both = runner.invoke(main, ["source", "video", str(h264_file), "--nats", server.url,
                                "--out", "push+connect:tcp://127.0.0.1:1"])
    assert both.exit_code == 2
