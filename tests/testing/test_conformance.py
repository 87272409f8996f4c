"""Our own sources and sinks pass the conformance checks we ship; broken ones are named."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from torchstream import Frame
from torchstream.sinks import CallbackSink, ImageSink, JsonLinesSink, VideoSink
from torchstream.sources import VideoSource
from torchstream.testing import ConformanceError, SyntheticSource, check_sink, check_source


def test_our_sources_conform(lossless_file: Path) -> None:
    assert len(check_source(VideoSource(lossless_file))) == 30
    assert len(check_source(SyntheticSource("s", frames=5))) == 5


def test_our_sinks_conform(tmp_path: Path) -> None:
    got: list[Frame] = []
    for sink in (
        CallbackSink(got.append),
        JsonLinesSink(tmp_path / "m.jsonl"),
        VideoSink(tmp_path / "v.mkv"),
        ImageSink(tmp_path / "images"),
    ):
        check_sink(sink)
    assert len(got) == 6
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 6
    assert sorted(p.name for p in tmp_path.glob("v*.mkv")) == ["v-b.mkv", "v.mkv"]


class Backwards(SyntheticSource):
    def frames(self) -> Iterator[Frame]:
        for frame in super().frames():
            frame.seq = 10 - frame.seq
            yield frame


def test_a_broken_source_is_named() -> None:
    with pytest.raises(ConformanceError, match=r"bad#9: seq must increase"):
        check_source(Backwards("bad", frames=3))
    with pytest.raises(ConformanceError, match="policy"):
        check_source(SyntheticSource("x", frames=1, policy="fast"))  # type: ignore[arg-type]
