#!/usr/bin/env bash
# The whole GPU measurement of issue 17 in one command, within 9 minutes on one NVIDIA GPU.
#
# Needs on the GPU machine: Python 3.12 with torch (CUDA), timm, numpy, opencv, safetensors (no
# network, no anomalib, no data sets). What it lacks travels with the working tree, prepared here:
#     bash benchmarks/gpu_wheels.sh                                       # .whl/: anomalib + deps, ~10 MB
#     python -m benchmarks.gpu_pack --data-root ../shared/data/visa_fryum  # .gpu/: fp16 weights + 48 frames, ~47 MB
# then, on the GPU machine, from the repository root (with the device tool: carry [".whl", ".gpu"]):
#     bash benchmarks/gpu.sh [RESULTS_DIR]        # default: $OUT if set, else benchmarks/results
#
# It runs the GPU-marked tests, then benchmarks/speed.py at 448x672 and 224x336 with the 16-shot
# rotated bank and a padded 1,000,000-patch bank: ours fp32 (same scores as anomalib, checked), ours
# fast (fp16 + CUDA graphs, parity-checked against fp32: correlation >= 0.9999, identical verdicts),
# anomalib AnomalyDINO, and onnxruntime CUDA/TensorRT rows when an onnxruntime with CUDA is installed
# there; then the default configuration at 448, its profile, and zero-shot review scoring. Results in
# RESULTS_DIR (8 files, as many as the device tool brings back): gpu.txt, gpu_tests.log, speed_gpu.json/.log,
# speed_gpu_default.json/.log, gpu_profile.json, zero_shot_gpu.json (the last two print their log).
# First run on an H200: 3 minutes for steps 1-3 (benchmarks/speed_notes.md, "The GPU measurement, run").
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${1:-${OUT:-benchmarks/results}}
mkdir -p "$RESULTS"
[ -d .whl ] && [ -f .gpu/weights_fp16.safetensors ] || {
  echo "missing .whl/ or .gpu/: run benchmarks/gpu_wheels.sh and python -m benchmarks.gpu_pack here first" >&2; exit 2; }
PY=${PYTHON:-python3}
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/inspector-site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/inspector-site:$PWD PYTHONUNBUFFERED=1 INSPECTOR_CACHE_DIR=/tmp/inspector-cache
nvidia-smi -L 2>/dev/null | tee "$RESULTS/gpu.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null | tee -a "$RESULTS/gpu.txt"
ONNX=--no-onnx
if $PY -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" 2>/dev/null; then
  ONNX=""
fi
# 1. the GPU-marked tests first (~1 min): CUDA graphs and half precision against fp32, on the packed weights.
#    -o: that machine has no pytest-qt (qt_api would be an unknown option) and other package versions.
INSPECTOR_TEST_WEIGHTS=$PWD/.gpu/weights_fp16.safetensors timeout 60 $PY -m pytest -q -p no:cacheprovider \
  -o addopts="" -o filterwarnings="" -o qt_api=pyside6 -m gpu tests/models/test_fastpath.py 2>&1 \
  | tail -15 | tee "$RESULTS/gpu_tests.log"
# 2. ours configured like the peer (same scores) beside anomalib AnomalyDINO, ~3-5 min on an H100/H200:
#    2 sizes x 2 banks x (32 frames x 5 repeats at batch 1 + batches up to 128); the JSON is written after each size.
timeout 240 $PY -m benchmarks.speed --data-root .gpu/data --weights .gpu/weights_fp16.safetensors --device cuda \
  --sizes 448,224 --shots 16 --frames 32 --repeats 5 --large-bank 1000000 --batch-sizes 1,8,32,64,128 $ONNX \
  ${SPEED_ARGS:-} --json "$RESULTS/speed_gpu.json" 2>&1 | tee "$RESULTS/speed_gpu.log"
status=${PIPESTATUS[0]}
# 3. the product's default configuration (a default recipe's blocks and teach-built bank) at 448 px, ~1 min.
timeout 90 $PY -m benchmarks.speed --data-root .gpu/data --weights .gpu/weights_fp16.safetensors --device cuda \
  --config default --sizes 448 --shots 16 --frames 32 --repeats 3 --batch-sizes 1,8,32 $ONNX \
  --json "$RESULTS/speed_gpu_default.json" 2>&1 | tee "$RESULTS/speed_gpu_default.log"
# 4. where the default configuration's time goes (per-stage timings, top kernels), ~30 s.
timeout 60 $PY -m benchmarks.gpu_profile --data-root .gpu/data --weights .gpu/weights_fp16.safetensors \
  --json "$RESULTS/gpu_profile.json" 2>&1 | tail -40
# 5. zero-shot review scoring of a 192-image lot (64 references, 3 scales), ~20 s.
timeout 90 $PY -m benchmarks.gpu_zero_shot --data-root .gpu/data --weights .gpu/weights_fp16.safetensors \
  --images 192 --json "$RESULTS/zero_shot_gpu.json" 2>&1 | tail -30
exit "$status"
