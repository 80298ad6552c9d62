#!/usr/bin/env bash
# The GPU checks, in one script of at most 8 minutes, for a CUDA machine (the project never needs one):
#
#   1. benchmarks/kd_step.py in fp32, fp16 and bf16 (the fused KD loss's step time and peak memory)
#   2. benchmarks/topk_cache.py (KD from the top-k cache against the live teacher)
#   3. benchmarks/fp16_kd_check.py: a short word-level KD fairseq-train with --fp16, every loss finite
#   4. benchmarks/decode_speed.py: the demo's teacher shape (4+2), the former 6+6 one, the student shape and a
#      half-width one, decoding in fairseq and in CTranslate2 (int8_float16, float16) on the GPU
#
#   bash benchmarks/gpu.sh [RESULTS_DIR]          # default benchmarks/results/gpu
#   WHEELS=.whl bash benchmarks/gpu.sh OUT        # offline: installs from benchmarks/gpu_wheels.sh's files
#
# Each step has its own time limit; one that fails is recorded in RESULTS_DIR/status.txt and the next one
# runs. Nothing is written outside RESULTS_DIR (and /tmp).
set -uo pipefail
RESULTS=${1:-benchmarks/results/gpu}
PY=${PYTHON:-python3}
mkdir -p "$RESULTS"
STATUS="$RESULTS/status.txt"
: > "$STATUS"
export PYTHONUNBUFFERED=1

step() {  # step NAME SECONDS COMMAND...: runs COMMAND with a limit, its output in RESULTS/NAME.log
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    timeout "$limit" "$@" > "$RESULTS/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc in $((SECONDS - start)) s" | tee -a "$STATUS"
}

if ! $PY -c "import fairseq, ctranslate2, omegaconf" 2>/dev/null; then
    SITE=/tmp/fairseq_kd_site
    if [ -n "${WHEELS:-}" ]; then
        step install_wheels 120 $PY -m pip install --no-index --no-deps --no-build-isolation --target "$SITE" \
            "$WHEELS"/*.whl "$WHEELS"/antlr4-python3-runtime-*.tar.gz
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
        # fairseq-fixed compiles its extensions against the torch that is there
        step install_fairseq 240 $PY -m pip install --no-index --no-deps --no-build-isolation --target "$SITE" \
            "$WHEELS"/fairseq_fixed-*.tar.gz
    else
        step install 300 $PY -m pip install --no-build-isolation fairseq-fixed==0.12.3.1 ctranslate2 sacrebleu sentencepiece
    fi
    export PATH="$SITE/bin:$PATH"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{ nvidia-smi -L; $PY -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(), 'python', sys.version.split()[0])"; } > "$RESULTS/device.txt" 2>&1

for dtype in fp32 fp16 bf16; do
    step "kd_step_$dtype" 60 $PY benchmarks/kd_step.py --device cuda --dtype "$dtype" --output-dir "$RESULTS"
done
step topk_cache 60 $PY benchmarks/topk_cache.py --device cuda --output-dir "$RESULTS"
step fp16_kd_check 120 $PY benchmarks/fp16_kd_check.py --device cuda --precision fp16 --out "$RESULTS"
step decode_speed 150 $PY benchmarks/decode_speed.py --device cuda --ctranslate2 int8_float16 float16 \
    --shapes 4+2/128/512/4000 6+6/128/512/4000 2+1/128/512/4000 2+1/64/256/4000 --repeats 3 --name decode_speed_cuda --out "$RESULTS"
cat "$STATUS"
