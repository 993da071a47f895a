#!/usr/bin/env bash
# Download the wheels that benchmarks/gpu.sh installs on a GPU machine without network access.
#
# That machine has Python 3.12 with torch, timm, numpy, opencv, lightning, torchmetrics, einops,
# safetensors, onnx and onnxruntime (CPU), but not anomalib (the peer of benchmarks/speed.py) nor
# the packages below (pure Python but kornia-rs), which anomalib's AnomalyDINO import chain and our
# models.weights need there. The list was found by importing benchmarks.speed with only that
# machine's packages on sys.path, adding what failed until nothing did; the versions are the ones
# the development virtualenv runs. --no-deps: nothing else is fetched.
#
# Usage (repository root; needs PyPI): bash benchmarks/gpu_wheels.sh   -> .whl/*.whl (a few MB)
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(
  anomalib==2.7.0          # the peer: anomalib.models.image.anomaly_dino
  platformdirs==4.14.9     # models.weights (cache folder); anomalib too
  omegaconf==2.4.0         # anomalib.models (DictConfig)
  jsonargparse==4.46.0     # anomalib's CLI helpers, imported by anomalib.models
  docstring-parser==0.18.0 # jsonargparse[signatures]
  typeshed-client==2.15.0  # jsonargparse[signatures]
  rich-argparse==1.8.0     # anomalib.utils
  kornia==0.9.0            # anomalib.data, anomalib.models.components
  kornia-rs==0.2.0         # kornia, compiled
)
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "${WHEELS[@]}"
# FrEIA (imported by anomalib.models' cflow) is published as a source archive only: build its
# pure-Python wheel here (py3-none-any, so it installs on 3.12 there).
python3 -m pip wheel -q --no-deps freia==0.2 -w .whl
ls -la .whl
du -sh .whl
