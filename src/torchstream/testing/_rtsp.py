"""Real RTSP servers for tests: GStreamer's RTSP server in a child process, and a silent one.

The GStreamer server runs under the system Python (``/usr/bin/python3``), which has the
GObject bindings; Debian installs them with::

    apt-get install gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-base \\
        gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import tempfile
import threading
from fractions import Fraction
from pathlib import Path

__all__ = [
    "RTSP_SERVER_PACKAGES",
    "RtspTestServer",
    "SilentTcpServer",
    "free_port",
    "loop_clip",
    "rtsp_server_missing",
]

RTSP_SERVER_PACKAGES = (
    "gir1.2-gst-rtsp-server-1.0",
    "python3-gi",
    "gstreamer1.0-plugins-base",
    "gstreamer1.0-plugins-good",
    "gstreamer1.0-plugins-bad",
    "gstreamer1.0-plugins-ugly",
)
"""The Debian packages :class:`RtspTestServer` needs (x264enc is in -ugly, x265enc and
tsdemux in -bad, the RTP payloaders in -good)."""

_SYSTEM_PYTHON = "/usr/bin/python3"

_ELEMENTS = ("videotestsrc", "x264enc", "x265enc", "rtph264pay", "rtph265pay", "h264parse",
             "tsdemux", "jpegenc", "rtpjpegpay", "rtpvrawpay")

# Run by the system Python: argv = port, JSON {mount: [launch line, shared]}. Prints "ready"
# once listening; exits when its stdin closes (its owner died) or on SIGTERM/SIGKILL.
_SERVER_SCRIPT = r"""
import json, sys
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer

Gst.init(None)
port, mounts = sys.argv[1], json.loads(sys.argv[2])
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
for path, (launch, shared) in mounts.items():
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch)
    factory.set_shared(shared)
    server.get_mount_points().add_factory(path, factory)
if server.attach(None) == 0:
    print("cannot listen on port " + port, flush=True)
    sys.exit(1)
loop = GLib.MainLoop()
GLib.io_add_watch(sys.stdin.fileno(), GLib.IO_HUP | GLib.IO_IN, lambda *a: loop.quit())
print("ready", flush=True)
loop.run()
"""


def rtsp_server_missing() -> str | None:
    """Why :class:`RtspTestServer` cannot run here (naming the packages), or None if it can."""
    if not Path(_SYSTEM_PYTHON).exists():
        return f"{_SYSTEM_PYTHON} is missing"
    check = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0')\n"
        "from gi.repository import Gst, GstRtspServer; Gst.init(None)\n"
        f"missing = [e for e in {_ELEMENTS!r} if Gst.ElementFactory.find(e) is None]\n"
        "assert not missing, missing\n"
    )
    done = subprocess.run(
        [_SYSTEM_PYTHON, "-c", check], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode == 0:
        return None
    last = (done.stderr.strip().splitlines() or ["?"])[-1]
    return (
        f"GStreamer's RTSP server is not usable ({last}): "
        f"apt-get install {' '.join(RTSP_SERVER_PACKAGES)}"
    )


def _pattern(encoder: str, payloader: str, pattern: str, width: int, height: int,
             fps: int) -> str:
    # x264's zerolatency tune cuts pictures into slices; with SPS/PPS repeated before each
    # slice (config-interval=-1) FFmpeg's parser splits such a picture in two. Cameras send
    # one slice per picture: so does this server (one encoder thread).
    options = " threads=1" if encoder == "x264enc" else ""
    return (
        f"( videotestsrc is-live=true pattern={pattern} ! "
        f"video/x-raw,width={width},height={height},framerate={fps}/1 ! "
        f"{encoder} tune=zerolatency speed-preset=ultrafast key-int-max={fps}{options} ! "
        f"{payloader} name=pay0 pt=96 config-interval=-1 )"
    )


class RtspTestServer:
    """GStreamer's RTSP server on ``127.0.0.1``, in a child process run by the system Python.

    Mounts: ``/h264`` and ``/hevc`` (live test patterns, ``width`` x ``height`` at ``fps``,
    one keyframe a second, shared by all clients of a mount), ``/mjpeg`` (JPEG pictures, as
    MJPEG cameras send), ``/raw`` (uncompressed UYVY pictures, RFC 4175) and, with ``clip``
    (an MPEG-TS file of H.264, see :func:`loop_clip`), ``/clip``: the clip at its own rate,
    from its start for each client. :meth:`kill` ends the process with SIGKILL (a crash:
    clients see their connection drop), :meth:`start` starts it again on the same port;
    :meth:`pause` / :meth:`resume` stop and continue it with SIGSTOP / SIGCONT (a stall:
    connections stay open, nothing arrives, new connections are accepted by the kernel but
    never answered).
    Use it as a context manager; ``close`` is idempotent.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        clip: str | Path | None = None,
        width: int = 320,
        height: int = 240,
        fps: int = 25,
        start_timeout_seconds: float = 20.0,
    ) -> None:
        if fps < 1:
            raise ValueError(f"fps must be >= 1, got {fps}")
        self.port = port or free_port()
        self._start_timeout_seconds = start_timeout_seconds
        self._mounts: dict[str, tuple[str, bool]] = {
            "/h264": (_pattern("x264enc", "rtph264pay", "ball", width, height, fps), True),
            "/hevc": (_pattern("x265enc", "rtph265pay", "smpte", width, height, fps), True),
            "/mjpeg": (
                f"( videotestsrc is-live=true pattern=ball ! "
                f"video/x-raw,format=I420,width={width},height={height},framerate={fps}/1 ! "
                "jpegenc ! rtpjpegpay name=pay0 pt=26 )",  # RTP's JPEG is 4:2:0 (I420)
                True,
            ),
            "/raw": (
                f"( videotestsrc is-live=true pattern=smpte ! "
                f"video/x-raw,format=UYVY,width={width},height={height},framerate={fps}/1 ! "
                "rtpvrawpay name=pay0 pt=96 )",
                True,
            ),
        }
        if clip is not None:
            self._mounts["/clip"] = (
                f"( filesrc location={Path(clip).resolve()} ! tsdemux ! h264parse ! "
                "rtph264pay name=pay0 pt=96 config-interval=-1 )",
                False,
            )
        self._process: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    def url(self, mount: str = "/h264") -> str:
        return f"rtsp://127.0.0.1:{self.port}{mount}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> None:
        """Start the server (on the same port as before) and wait until it listens."""
        with self._lock:
            if self._process is not None:
                raise RuntimeError("the RTSP test server is already running")
            with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as script:
                script.write(_SERVER_SCRIPT)
            try:
                process = subprocess.Popen(
                    [_SYSTEM_PYTHON, script.name, str(self.port), json.dumps(self._mounts)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                    text=True,
                )
                line = _read_line(process, self._start_timeout_seconds)
            finally:
                os.unlink(script.name)
            if line != "ready":
                process.kill()
                process.wait()
                raise RuntimeError(f"the RTSP test server did not start: {line!r}")
            self._process = process

    def kill(self) -> None:
        """SIGKILL the server (as a crash would) and reap it. No-op when not running."""
        with self._lock:
            process, self._process = self._process, None
        if process is not None:
            process.send_signal(signal.SIGCONT)  # a paused process dies as well
            process.kill()
            process.wait()
            if process.stdin is not None:
                process.stdin.close()
            if process.stdout is not None:
                process.stdout.close()

    def pause(self) -> None:
        """SIGSTOP: the server stops sending and answering, its sockets stay open."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.kill()

    def __enter__(self) -> RtspTestServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _read_line(process: subprocess.Popen[str], timeout_seconds: float) -> str:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout_seconds):
            return f"no answer within {timeout_seconds} s"
    return process.stdout.readline().strip()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class SilentTcpServer:
    """A TCP server on ``127.0.0.1`` that accepts connections and never sends a byte: what a
    hung camera looks like. Its thread (``ts/test/silent-server``) keeps the accepted sockets
    open until ``close``."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.accepted = 0
        self._connections: list[socket.socket] = []
        self._thread = threading.Thread(
            target=self._accept, name="ts/test/silent-server", daemon=True
        )
        self._thread.start()

    def url(self, path: str = "/cam") -> str:
        return f"rtsp://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:  # closed
                return
            self.accepted += 1
            self._connections.append(connection)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join()
        for connection in self._connections:
            connection.close()
        self._connections.clear()

    def __enter__(self) -> SilentTcpServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def loop_clip(source: str | Path, target: str | Path, *, repeat: int) -> Path:
    """Write ``source``'s video stream ``repeat`` times back to back into the MPEG-TS file
    ``target`` (packets copied, not re-encoded; timestamps shifted), for ``/clip``."""
    import av

    target = Path(target)
    with av.open(str(source)) as inp, av.open(str(target), "w", format="mpegts") as out:
        stream = inp.streams.video[0]
        packets = [p for p in inp.demux(stream) if p.size]
        time_base = stream.time_base or Fraction(1, 90000)
        rate = stream.average_rate or 25
        step = round(1 / (float(rate) * float(time_base)))
        first = min(p.dts if p.dts is not None else 0 for p in packets)
        span = max((p.pts or 0) for p in packets) - first + step
        written = out.add_stream_from_template(stream)
        for index in range(repeat):
            for packet in packets:
                copy = av.Packet(bytes(packet))
                offset = index * span - first
                copy.pts = None if packet.pts is None else packet.pts + offset
                copy.dts = None if packet.dts is None else packet.dts + offset
                copy.time_base = time_base
                copy.is_keyframe = packet.is_keyframe
                copy.stream = written
                out.mux(copy)
    return target
