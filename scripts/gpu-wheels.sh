#!/usr/bin/env bash
# Download into .whl/ the wheels scripts/gpu-check.sh installs on a GPU machine that has only
# torch, transformers, onnx and onnxruntime (and no network): cp312 manylinux x86_64 wheels of
# diffusers, pydantic (+ its matching pydantic-core), python-osc, zeroconf and their needs, about
# 11 MB. Run it on a connected machine from the repository root; .whl/ is git-ignored.
#
#   scripts/gpu-wheels.sh                 # pinned versions below, into .whl/
#   GPU_WHEELS_DIR=/tmp/w scripts/gpu-wheels.sh
#
# Then it checks the set (scripts/check_wheels.py): one version per project, every wheel installs
# on CPython 3.12 / Linux x86_64, every requirement met by the set or by the GPU image
# (scripts/gpu-image-packages.txt). Exit 0 when the set is complete and consistent.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${GPU_WHEELS_DIR:-.whl}"
PY="${PYTHON:-python3}"
PYVER="${GPU_PYTHON_VERSION:-3.12}"

# versions tested together by this project's CI (pydantic pins pydantic-core exactly)
WHEELS=(
  "diffusers==0.42.1"
  "importlib_metadata==8.7.0"
  "pydantic==2.14.4"
  "pydantic-core==2.50.5"
  "annotated-types==0.8.0"
  "typing-inspection==0.4.5"
  "typing_extensions==4.16.0"
  "python-osc==1.10.2"
  "zeroconf==0.154.0"
  "ifaddr==0.2.0"
)

mkdir -p "$DEST"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$DEST" "${WHEELS[@]}"
"$PY" scripts/check_wheels.py "$DEST" --present scripts/gpu-image-packages.txt
du -sh "$DEST" | awk '{print "wheels: " $1 " in " $2}'
