from __future__ import annotations

from pathlib import Path

import pytest

from torchstream import BrokenResourceError, Frame, Pipeline, decode_json
from torchstream.sinks import JsonLinesSink
from torchstream.testing import RectangleDetector, SyntheticSource


def test_one_line_per_frame_in_order(tmp_path: Path) -> None:
    path = tmp_path / "meta.jsonl"
    with Pipeline([RectangleDetector()], [JsonLinesSink(path)]) as pipeline:
        pipeline.add_source(SyntheticSource("a", frames=12))
        pipeline.add_source(SyntheticSource("b", frames=9))
        pipeline.wait()
    frames = [decode_json(line) for line in path.read_bytes().splitlines()]
    assert len(frames) == 21
    for sid, count in (("a", 12), ("b", 9)):
        assert [f.seq for f in frames if f.source_id == sid] == list(range(count))
    assert all(len(f.objects) == 3 for f in frames)


def test_unwritable_path_is_named(tmp_path: Path) -> None:
    sink = JsonLinesSink(tmp_path / "missing" / "meta.jsonl")
    with pytest.raises(BrokenResourceError, match=r"missing/meta\.jsonl"):
        sink.write(Frame(source_id="a", seq=0, width=1, height=1))
    sink.close()
    sink.close()
