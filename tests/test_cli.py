from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from torchstream import decode_json
from torchstream.cli import main

PIPELINE = '''
from dataclasses import dataclass, field
from typing import Literal

from torchstream import PipelineSpec, RunConfig
from torchstream.testing import RectangleDetector


@dataclass(frozen=True)
class Options:
    delay_ms: float = field(default=0.0, metadata={"help": "sleep per batch"})
    mode: Literal["fast", "exact"] = "exact"
    boxes: bool = True


def build(config: RunConfig, options: Options) -> PipelineSpec:
    stage = RectangleDetector(batch_policy=config.batch_policy,
                              delay_seconds=options.delay_ms / 1000)
    return PipelineSpec(stages=[stage])
'''


@pytest.fixture
def pipeline_file(tmp_path: Path) -> Path:
    path = tmp_path / "rects_pipeline.py"
    path.write_text(PIPELINE)
    return path


def test_run_writes_metadata_and_video_and_reports_bad_inputs(
    tmp_path: Path, pipeline_file: Path, lossless_file: Path
) -> None:
    meta, video = tmp_path / "out" / "meta.jsonl", tmp_path / "out" / "video.mp4"
    result = CliRunner().invoke(main, [
        "run", str(pipeline_file), "--input", str(lossless_file),
        "--input", str(tmp_path / "missing.mp4"), "--meta", str(meta), "--output", str(video),
        "--batch-size", "4", "--delay-ms", "1", "--mode", "fast", "--no-boxes",
    ])
    assert result.exit_code == 1, result.output
    assert "missing.mp4: no such file" in result.output
    lines = [decode_json(line) for line in meta.read_bytes().splitlines()]
    assert [f.seq for f in lines] == list(range(30))
    assert all(len(f.objects) == 3 for f in lines)
    assert video.stat().st_size > 1000
    assert "30 frames" in result.output


def test_pipeline_options_are_checked_and_listed(pipeline_file: Path, lossless_file: Path) -> None:
    runner = CliRunner()
    bad = runner.invoke(main, ["run", str(pipeline_file), "-i", str(lossless_file), "--mode", "x"])
    assert bad.exit_code == 2 and "--mode must be one of fast, exact" in bad.output
    unknown = runner.invoke(main, ["run", str(pipeline_file), "-i", "x", "--speed", "3"])
    assert unknown.exit_code == 2 and "--delay-ms" in unknown.output
    helped = runner.invoke(main, ["run", str(pipeline_file), "--help"])
    assert helped.exit_code == 0
    assert "--delay-ms FLOAT" in helped.output and "sleep per batch" in helped.output
    assert "--boxes / --no-boxes" in helped.output


def test_unknown_pipeline_and_missing_input(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["run", "nonsense", "-i", "x.mp4"])
    assert result.exit_code == 2 and "bundled sample" in result.output
    result = runner.invoke(main, ["run", "faces"])
    assert result.exit_code == 2 and "--input" in result.output


def test_entry_point_runs_as_a_process(pipeline_file: Path, lossless_file: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "torchstream.cli", "run", str(pipeline_file),
         "-i", str(lossless_file), "--meta", "-", "--quiet"],
        capture_output=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert len(done.stdout.splitlines()) == 30


def test_metrics_endpoint_is_announced_and_a_busy_port_is_an_error(
    pipeline_file: Path, lossless_file: Path
) -> None:
    pytest.importorskip("prometheus_client", reason="pip install 'torchstream[telemetry]'")
    import socket

    runner = CliRunner()
    result = runner.invoke(main, [
        "run", str(pipeline_file), "-i", str(lossless_file), "--metrics-port", "0", "-q",
    ])
    assert result.exit_code == 0, result.output
    assert "metrics: http://127.0.0.1:" in result.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(main, [
            "run", str(pipeline_file), "-i", str(lossless_file), "--metrics-port", str(port),
        ])
    assert result.exit_code == 2 and "cannot serve metrics" in result.output


SPEED_PIPELINE = '''
import json, sys
from pathlib import Path

from torchstream import PipelineSpec, RunConfig
from torchstream.testing import RectangleDetector


def build(config: RunConfig, options: None) -> PipelineSpec:
    Path(__file__).with_suffix(".json").write_text(json.dumps({
        "half": config.half, "channels_last": config.channels_last,
        "cuda_graphs": config.cuda_graphs, "compile_mode": config.compile_mode,
        "pad": config.batch_policy.pad_to_max_size, "batch": config.batch_policy.max_size,
        "switch_ms": round(sys.getswitchinterval() * 1000, 3),
    }))
    return PipelineSpec(stages=[RectangleDetector(batch_policy=config.batch_policy)])
'''


def test_speed_options_reach_the_pipeline_and_are_checked(
    tmp_path: Path, lossless_file: Path
) -> None:
    import json

    pipeline = tmp_path / "speed.py"
    pipeline.write_text(SPEED_PIPELINE)
    before = sys.getswitchinterval()
    try:
        result = CliRunner().invoke(main, [
            "run", str(pipeline), "--input", str(lossless_file), "--quiet", "--batch-size", "8",
            "--half", "--channels-last", "--cuda-graphs", "--compile", "default",
            "--switch-interval-ms", "0.5",
        ])
        assert result.exit_code == 0, result.output
        assert json.loads(pipeline.with_suffix(".json").read_text()) == {
            "half": True, "channels_last": True, "cuda_graphs": True, "compile_mode": "default",
            "pad": True, "batch": 8, "switch_ms": 0.5,
        }
        refused = CliRunner().invoke(main, [
            "run", str(pipeline), "--input", str(lossless_file),
            "--cuda-graphs", "--compile", "reduce-overhead",
        ])
        assert refused.exit_code == 2 and "do not go together" in refused.output
    finally:
        sys.setswitchinterval(before)
