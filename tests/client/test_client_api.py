"""The client's public names, and what happens without pyzmq or without OpenTelemetry.
Not test_exports.py: that basename is tests/transport's."""

from __future__ import annotations

import subprocess
import sys

import pytest

PUBLIC = {
    "AsyncClient", "AsyncMatcher", "AsyncNatsSink", "AsyncSink", "AsyncSource", "ContentKind",
    "ImageFormat", "Matcher", "MatcherStatistics", "NatsSink", "RawFormat", "Result",
    "SendResult", "Sink", "SinkStatistics", "Source", "SourceStatistics", "image_format",
    "new_traceparent",
}


def test_public_names() -> None:
    pytest.importorskip("zmq", reason="needs pyzmq: pip install 'torchstream[transport]'")
    import torchstream.client as client

    assert set(client.__all__) == PUBLIC
    for name in PUBLIC:
        assert hasattr(client, name), name


_CODE = """
import sys
sys.modules['opentelemetry'] = None  # as if OpenTelemetry were not installed
from torchstream.client import new_traceparent
from torchstream.client._requests import Requests
png = b'\\x89PNG\\r\\n\\x1a\\n' + bytes(4) + b'IHDR' + bytes([0, 0, 0, 2] * 2)
out = Requests().image('cam', png)
print(new_traceparent()[:3], out.sent.seq, sorted(m for m in sys.modules if 'opentelemetry' in m))
# Then as if pyzmq were not installed either: forget what imported it, and import again.
for name in [m for m in sys.modules if m.split('.')[0] == 'zmq' or m.startswith(
        ('torchstream.client', 'torchstream.transport'))]:
    del sys.modules[name]
sys.modules['zmq'] = None
import torchstream
try:
    import torchstream.client
except torchstream.MissingDependencyError as exc:
    print(exc)
else:
    raise SystemExit('torchstream.client imported without pyzmq')
"""


def test_without_opentelemetry_and_without_pyzmq() -> None:
    # One fresh interpreter (it imports torch, which takes seconds).
    pytest.importorskip("zmq", reason="needs pyzmq: pip install 'torchstream[transport]'")
    done = subprocess.run([sys.executable, "-c", _CODE], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "00- 0 ['opentelemetry']",
        "pyzmq is not installed: pip install 'torchstream[transport]'",
    ]
