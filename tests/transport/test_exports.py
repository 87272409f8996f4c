"""The transport's public names, and what happens without pyzmq."""

from __future__ import annotations

import subprocess
import sys

import pytest

PUBLIC = {
    "PROTOCOL_VERSION", "EndOfStream", "EndOfStreamAck", "Endpoint", "FrameMessage",
    "ImagePayload", "Limits", "Message", "PacketPayload", "Payload", "ProtocolError",
    "RawPayload", "Receiver", "ReceiverStatistics", "RejectReason", "Rejects", "ResultMessage",
    "Sender", "SenderStatistics", "Shutdown", "SocketOptions", "SocketType", "decode", "encode",
    "topic_of", "Content", "Module", "ModuleStatistics", "PublishSink", "ResultAck",
    "Receipt",
}


def test_public_names() -> None:
    pytest.importorskip("zmq", reason="needs pyzmq: pip install 'torchstream[transport]'")
    import torchstream
    import torchstream.transport as transport

    assert set(transport.__all__) == PUBLIC
    for name in PUBLIC:
        assert hasattr(transport, name), name
    assert issubclass(transport.ProtocolError, torchstream.TorchStreamError)


def test_without_pyzmq_the_core_imports_and_transport_names_the_extra() -> None:
    # A fresh interpreter where `import zmq` fails, as it does when pyzmq is not installed.
    code = (
        "import sys\n"
        "sys.modules['zmq'] = None\n"
        "import torchstream, torchstream.pipeline, torchstream.sources, torchstream.sinks\n"
        "try:\n"
        "    import torchstream.transport\n"
        "except torchstream.MissingDependencyError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    raise SystemExit('torchstream.transport imported without pyzmq')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "pyzmq is not installed: pip install 'torchstream[transport]'"
