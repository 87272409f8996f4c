from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from torchstream._logging import JsonFormatter


def test_json_formatter_writes_one_object_per_record() -> None:
    record = logging.makeLogRecord({
        "name": "torchstream.test", "levelname": "WARNING", "levelno": 30,
        "msg": "source %s failed", "args": ("cam1",), "threadName": "ts/source/cam1",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    })
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "source cam1 failed" and entry["level"] == "warning"
    assert entry["thread"] == "ts/source/cam1" and entry["logger"] == "torchstream.test"
    assert entry["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert "ValueError: boom" in entry["exception"] and entry["time"].endswith("Z")


def test_cli_json_logs(tmp_path: Path, lossless_file: Path) -> None:
    pipeline = tmp_path / "p.py"
    pipeline.write_text(
        "from torchstream import PipelineSpec\n"
        "def build(config, options):\n    return PipelineSpec(stages=[])\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "torchstream.cli", "run", str(pipeline), "-i", str(lossless_file),
         "-i", str(tmp_path / "missing.mp4"), "-q", "--log-format", "json",
         "--log-level", "warning"],
        capture_output=True, timeout=120, check=False,
    )
    assert done.returncode == 1
    entries = [json.loads(line) for line in done.stderr.decode().splitlines()
               if line.startswith("{")]
    failed = [e for e in entries if "no such file" in e["message"]]
    assert failed and failed[0]["level"] == "warning"
    assert failed[0]["thread"] == "ts/source/missing.mp4"
