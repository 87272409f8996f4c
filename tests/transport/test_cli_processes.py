"""The three-terminal set-up as real processes: source adapters → module → sink adapter."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("zmq", reason="needs pyzmq: pip install 'torchstream[transport]'")

from torchstream import Frame, decode_json
from torchstream.testing import SyntheticVideo, write_video
from torchstream.transport import ImagePayload, ResultMessage
from torchstream.transport._adapters import ImageResultWriter, VideoResultWriter

PIPELINE = '''
from torchstream import PipelineSpec, RunConfig
from torchstream.testing import RectangleDetector


def build(config: RunConfig, options: None) -> PipelineSpec:
    return PipelineSpec(stages=[RectangleDetector(batch_policy=config.batch_policy)])
'''

VIDEO = SyntheticVideo(width=160, height=96)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "torchstream.cli", *args]


def test_sources_module_and_sink_as_processes(tmp_path: Path) -> None:
    pipeline = tmp_path / "rects.py"
    pipeline.write_text(PIPELINE)
    clips = [write_video(tmp_path / f"cam{i}.mp4", VIDEO, 20 + 5 * i, codec="libx264")
             for i in range(3)]
    inbound, outbound = f"ipc://{tmp_path}/in", f"ipc://{tmp_path}/out"
    secret = tmp_path / "secret"
    secret.write_text("let-me-stop\n")
    module = subprocess.Popen(
        cli("module", str(pipeline), "--in", f"router+bind:{inbound}",
            "--out", f"push+bind:{outbound}", "--shutdown-secret-file", str(secret)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    sink = subprocess.Popen(
        cli("sink", "json", str(tmp_path / "results.jsonl"), "--in",
            f"pull+connect:{outbound}", "--exit-after", "3"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        sources = subprocess.run(
            cli("source", "video", *map(str, clips), "--out", f"dealer+connect:{inbound}"),
            capture_output=True, timeout=120, check=False,
        )
        assert sources.returncode == 0, sources.stderr.decode()
        assert sink.wait(60) == 0, sink.stderr.read().decode()  # type: ignore[union-attr]
        module.send_signal(signal.SIGTERM)
        assert module.wait(60) == 0, module.stderr.read().decode()  # type: ignore[union-attr]
        assert b"module stopped" in module.stderr.read()  # type: ignore[union-attr]
    finally:
        for process in (module, sink):
            if process.poll() is None:
                process.kill()
                process.wait()
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
    lines = (tmp_path / "results.jsonl").read_bytes().splitlines()
    frames = [decode_json(line) for line in lines]
    for i in range(3):
        mine = [f for f in frames if f.source_id == f"cam{i}.mp4"]
        assert len(mine) == 20 + 5 * i
        assert [f.pts_seconds for f in mine] == sorted(f.pts_seconds or 0.0 for f in mine)
        assert all(f.objects for f in mine)


def test_source_adapter_names_a_bad_input_and_a_bad_endpoint(tmp_path: Path) -> None:
    done = subprocess.run(
        cli("source", "video", str(tmp_path / "missing.mp4"), "--out",
            f"dealer+connect:ipc://{tmp_path}/nobody"),
        capture_output=True, timeout=60, check=False,
    )
    assert done.returncode == 1 and b"missing.mp4" in done.stderr
    done = subprocess.run(
        cli("source", "video", "x.mp4", "--out", "dealer:tcp://127.0.0.1:1"),
        capture_output=True, timeout=60, check=False,
    )
    assert done.returncode == 2 and b"--out" in done.stderr


def test_image_and_video_result_writers(tmp_path: Path) -> None:
    from torchstream.sinks import encode_picture

    picture = VIDEO.render(0)
    jpeg = encode_picture(picture, "jpg")
    images = ImageResultWriter(tmp_path / "images")
    video = VideoResultWriter(str(tmp_path / "videos" / "{source_id}.mkv"))
    for seq in range(5):
        frame = Frame(source_id="cam/1", seq=seq, pts_seconds=seq / 30, width=160, height=96)
        result = ResultMessage(frame=frame, content="image", payload=ImagePayload(format="jpeg"))
        for writer in (images, video):
            writer.write(result, memoryview(jpeg))
    bare = ResultMessage(frame=Frame(source_id="cam/1", seq=9, width=160, height=96))
    images.write(bare, None)
    video.end("cam/1")
    assert sorted(p.name for p in (tmp_path / "images" / "cam_1").iterdir()) == [
        f"{seq:06d}.jpg" for seq in range(5)
    ]
    assert images.skipped == 1
    assert video.paths == [tmp_path / "videos" / "cam_1.mkv"]
    import av

    with av.open(str(video.paths[0])) as container:
        assert sum(1 for _ in container.decode(video=0)) == 5


def test_commands_are_listed_with_their_options() -> None:
    from click.testing import CliRunner

    from torchstream.cli import main

    runner = CliRunner()
    for command in (["module", "faces", "--help"], ["source", "url", "--help"],
                    ["source", "images", "--help"], ["sink", "video", "--help"]):
        result = runner.invoke(main, command)
        assert result.exit_code == 0, (command, result.output)
    assert "--sync" in runner.invoke(main, ["source", "url", "--help"]).output
    assert "--shutdown-secret-file" in runner.invoke(main, ["module", "faces", "--help"]).output
