"""Starting and stopping the servers of ``benchmarks/http.py``: each in its own process group,
pinned to the cores the load generator leaves free, ready once its health route answers 200.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server and where to reach it."""

    name: str
    argv: list[str]
    ready_path: str
    infer_path: str = "/v1/infer"


def split_cpus(generator_cpus: int | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(generator cores, server cores); both empty (no pinning) on a single core."""
    cpus = tuple(sorted(os.sched_getaffinity(0)))
    if len(cpus) < 2:
        return (), ()
    count = generator_cpus or (1 if len(cpus) < 8 else min(4, max(2, len(cpus) // 4)))
    if not 1 <= count < len(cpus):
        raise ValueError(f"--client-cpus must be between 1 and {len(cpus) - 1}, got {count}")
    return cpus[:count], cpus[count:]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def running(
    spec: ServerSpec, port: int, cpus: Sequence[int], log_folder: Path, ready_seconds: float
) -> Iterator[str]:
    """Start the server in its own process group pinned to ``cpus``, wait until its ready
    route answers 200, yield its inference URL; stop the whole group on the way out."""
    environment = dict(os.environ)
    if cpus:
        # torch sizes its thread pool by the machine, not by the cores it may use.
        environment.setdefault("OMP_NUM_THREADS", str(len(cpus)))
    log_path = log_folder / f"{spec.name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            spec.argv, cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(process, base + spec.ready_path, ready_seconds, log_path)
        yield base + spec.infer_path
    finally:
        _stop(process)


def _wait_ready(process: subprocess.Popen, url: str, seconds: float, log_path: Path) -> None:
    deadline = time.monotonic() + seconds
    with httpx.Client(trust_env=False, timeout=2) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {process.returncode}:\n{_tail(log_path)}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url).status_code == 200:
                    return
            time.sleep(0.25)  # an external process: nothing to wait on but its port
    raise RuntimeError(f"{url} did not answer 200 within {seconds:.0f} s:\n{_tail(log_path)}")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (LitServe and uvicorn workers are children),
    SIGKILL to what is left after 3 s (a server still busy with abandoned requests would
    otherwise finish them first)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(3)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
