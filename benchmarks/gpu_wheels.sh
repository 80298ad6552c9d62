#!/usr/bin/env bash
# Downloads what benchmarks/gpu.sh installs on a CUDA machine without network access (Python 3.12, torch
# present): fairseq-fixed's source (built there against that machine's torch), its pure-Python
# dependencies and CTranslate2, as files in DIR (default: .whl). About 54 MB.
#
#   bash benchmarks/gpu_wheels.sh [DIR]      # here, with network; then WHEELS=DIR bash benchmarks/gpu.sh there
set -euo pipefail
DIR=${1:-.whl}
PY=${PYTHON:-python3}
mkdir -p "$DIR"
binary=(--only-binary=:all: --python-version 3.12 --implementation cp
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
$PY -m pip download -q --no-deps "${binary[@]}" -d "$DIR" ctranslate2==4.8.5 bitarray==3.12.3
$PY -m pip download -q --no-deps -d "$DIR" omegaconf==2.3.0 hydra-core==1.3.2 antlr4-python3-runtime==4.9.3
$PY -m pip download -q --no-deps --no-build-isolation --no-binary=:all: -d "$DIR" fairseq-fixed==0.12.3.1
ls -l "$DIR"
