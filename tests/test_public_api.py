"""The public surface is a decision: this test fails when it changes by accident."""

from __future__ import annotations

import torchstream
import torchstream.codecs
import torchstream.sinks
import torchstream.sources

PUBLIC = {
    "SCHEMA_VERSION", "AnnotationStyle", "BatchPolicy", "BrokenResourceError",
    "ClosedResourceError", "Crop", "Frame", "Keypoint", "Mask", "MissingDependencyError",
    "ModelStage", "ObjectMeta", "OverloadedError", "Pipeline", "PipelineError", "PipelineSpec",
    "PipelineStatistics", "RunConfig", "Session", "Sink", "Source", "SourceError", "Stage",
    "StageError", "TorchStreamError", "__version__", "decode_json", "decode_msgpack",
    "encode_json", "encode_msgpack",
}


def test_top_level_names() -> None:
    assert set(torchstream.__all__) == PUBLIC
    for name in PUBLIC:
        assert hasattr(torchstream, name), name


def test_sub_namespaces() -> None:
    assert set(torchstream.sources.__all__) == {
        "IMAGE_SUFFIXES", "LIVE_SCHEMES", "DecoderChoice", "ImageSource", "LivePolicy",
        "LiveSource", "PushedSource", "VideoSource", "is_live", "open_source",
    }
    assert set(torchstream.codecs.__all__) == {
        "EncodedPacket", "NvdecSessions", "SessionStatistics", "VideoEncoder", "decode_image",
        "demux_packets", "nvdec_sessions",
    }
    assert set(torchstream.sinks.__all__) == {
        "CallbackSink", "ImageSink", "JsonLinesSink", "VideoSink", "encode_picture"
    }


def test_errors_share_one_base() -> None:
    for name in PUBLIC:
        obj = getattr(torchstream, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, torchstream.TorchStreamError), name


def test_plugins_satisfy_their_protocols() -> None:
    from torchstream.sinks import CallbackSink, JsonLinesSink, VideoSink
    from torchstream.sources import ImageSource, LiveSource, VideoSource
    from torchstream.testing import RectangleDetector, SyntheticSource

    for source in (
        VideoSource("a.mp4"), ImageSource("a.png"), SyntheticSource("s", frames=1),
        LiveSource("rtsp://127.0.0.1/cam"),
    ):
        assert isinstance(source, torchstream.Source)
    for sink in (CallbackSink(print), JsonLinesSink("-"), VideoSink("/tmp/x.mp4")):
        assert isinstance(sink, torchstream.Sink)
    assert isinstance(RectangleDetector(), torchstream.Stage)


def test_import_has_no_logging_side_effects() -> None:
    import subprocess
    import sys

    code = (
        "import logging, torchstream, torchstream.sources, torchstream.sinks, "
        "torchstream.testing, torchstream.models, torchstream.surface, torchstream.cli\n"
        "assert logging.getLogger().handlers == [], logging.getLogger().handlers\n"
        "assert logging.getLogger('torchstream').handlers == []\n"
        "assert logging.getLogger().level == logging.WARNING\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
