"""The two servers ``benchmarks/http.py`` compares torchstream with, running the same model
(``_http_model.py``): ``POST /v1/infer`` with a raw JPEG body (``Content-Type: image/jpeg``)
answers ``{"top5": [[class_index, probability], ...]}``.

    python benchmarks/_http_peers.py fastapi|litserve|trivial --port P [--device cpu|cuda]
        [--half] [--max-batch-size N] [--batch-timeout-seconds S] [--workers W] [--fast-queue]

- ``fastapi``: the usual approach. A plain FastAPI app on uvicorn whose synchronous endpoint
  decodes, preprocesses and runs the model on one image (batch 1); FastAPI runs it in its
  thread pool (40 threads), so requests run concurrently but never batch. ``--workers``:
  uvicorn worker processes, each with its own copy of the model. Health: ``GET /healthz``.
- ``litserve``: LitServe with dynamic batching (``LitAPI(max_batch_size=N,
  batch_timeout=S)``): the JPEG is decoded in ``decode_request`` and the batch letterboxed
  in ``batch``. ``--workers``: inference worker processes per device. Health: ``GET
  /health`` (200 once every worker has loaded its model).
- ``trivial``: no model; reads the body and answers a fixed top-5. ``http.py`` measures the
  load generator against it.

The request body reaches both as ``bytes`` through a ``Body(media_type="image/jpeg")``
annotation: FastAPI hands a non-JSON body over as-is (LitServe would otherwise parse every
body as JSON). This file must not use ``from __future__ import annotations``: both read that
annotation at run time.
"""

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

# benchmarks/ holds http.py, which would shadow the standard library's http package (uvicorn
# imports it): look here last.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

import _http_model as model  # noqa: E402
import torch  # noqa: E402
from fastapi import Body, FastAPI, HTTPException  # noqa: E402

JpegBody = Annotated[bytes, Body(media_type="image/jpeg")]
INFER_PATH = "/v1/infer"
_CONFIG_VARIABLE = "TS_HTTP_PEER_CONFIG"  # hands the settings to uvicorn's worker processes


def _dtype(device: torch.device, half: bool) -> torch.dtype:
    return torch.float16 if half and device.type == "cuda" else torch.float32


def fastapi_app(device: str = "cpu", half: bool = False) -> FastAPI:
    """The plain FastAPI server: one image per request, model called inside the endpoint."""
    where = torch.device(device)
    dtype = _dtype(where, half)
    net = model.load_resnet50().to(device=where, dtype=dtype)
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.post(INFER_PATH)
    def infer(body: JpegBody) -> dict[str, Any]:
        try:
            picture = model.decode_jpeg(body)
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        with torch.inference_mode():
            logits = net(model.preprocess([picture], where, dtype))
        return {"top5": model.top5(logits)[0]}

    return app


def fastapi_app_from_environment() -> FastAPI:
    """The app factory uvicorn's worker processes call (``--workers`` > 1)."""
    settings = json.loads(os.environ[_CONFIG_VARIABLE])
    return fastapi_app(settings["device"], settings["half"])


def trivial_app() -> FastAPI:
    """Reads the whole body and answers at once: what the load generator alone can do."""
    app = FastAPI()
    answer = {"top5": [[0, 1.0], [1, 0.0], [2, 0.0], [3, 0.0], [4, 0.0]]}

    @app.get("/healthz")
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.post(INFER_PATH)
    async def infer(body: JpegBody) -> dict[str, Any]:
        return answer

    return app


try:
    import litserve as ls
except ImportError:
    ls = None

if ls is not None:

    class LitClassifier(ls.LitAPI):  # type: ignore[misc]
        """The model as LitServe wants it: decode one request, batch, predict, unbatch."""

        def __init__(self, *, half: bool, max_batch_size: int, batch_timeout: float) -> None:
            super().__init__(
                max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=INFER_PATH
            )
            self.half = half

        def setup(self, device: str) -> None:
            self.where = torch.device(device)
            self.dtype = _dtype(self.where, self.half)
            self.net = model.load_resnet50().to(device=self.where, dtype=self.dtype)

        def decode_request(self, request: JpegBody) -> torch.Tensor:
            try:
                return model.decode_jpeg(request)
            except ValueError as exc:
                raise HTTPException(status_code=400, detail=str(exc)) from exc

        def batch(self, inputs: list[torch.Tensor]) -> torch.Tensor:
            return model.preprocess(inputs, self.where, self.dtype)

        def predict(self, x: torch.Tensor) -> list[list[list[float]]]:
            with torch.inference_mode():
                return model.top5(self.net(x))

        def unbatch(self, output: list[list[list[float]]]) -> list[list[list[float]]]:
            return output

        def encode_response(self, output: list[list[float]]) -> dict[str, Any]:
            return {"top5": output}


def serve_litserve(args: argparse.Namespace) -> None:
    if ls is None:
        sys.exit("litserve is not installed: pip install litserve")
    api = LitClassifier(
        half=args.half,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout_seconds,
    )
    server = ls.LitServer(
        api, accelerator="cuda" if args.device.startswith("cuda") else "cpu",
        devices=1, workers_per_device=args.workers, fast_queue=args.fast_queue,
    )
    server.run(
        host=args.host, port=args.port, generate_client_file=False, log_level="warning",
        access_log=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("server", choices=["fastapi", "litserve", "trivial"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--half", action="store_true", help="float16 on CUDA")
    parser.add_argument("--max-batch-size", type=int, default=8, help="litserve only")
    parser.add_argument("--batch-timeout-seconds", type=float, default=0.01, help="litserve only")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--fast-queue", action="store_true",
                        help="litserve only: ZeroMQ instead of multiprocessing queues")
    args = parser.parse_args()
    if args.workers < 1 or args.max_batch_size < 1 or args.batch_timeout_seconds < 0:
        parser.error("--workers and --max-batch-size must be >= 1, --batch-timeout-seconds >= 0")
    import uvicorn

    if args.server == "litserve":
        serve_litserve(args)
    elif args.server == "trivial":
        uvicorn.run("_http_peers:trivial_app", factory=True, workers=args.workers,
                    host=args.host, port=args.port, log_level="warning", access_log=False)
    elif args.workers == 1:
        uvicorn.run(fastapi_app(args.device, args.half), host=args.host, port=args.port,
                    log_level="warning", access_log=False)
    else:
        os.environ[_CONFIG_VARIABLE] = json.dumps({"device": args.device, "half": args.half})
        uvicorn.run("_http_peers:fastapi_app_from_environment", factory=True,
                    workers=args.workers, host=args.host, port=args.port,
                    log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
