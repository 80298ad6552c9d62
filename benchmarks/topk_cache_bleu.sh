#!/usr/bin/env bash
# Test BLEU of a student distilled from a top-k cache against one distilled from the live teacher over
# the whole vocabulary: the same student, data, flags and budget as the KD student of `make toy-demo`
# (run that first). Writes benchmarks/results/topk_cache_bleu.md.
#
#   benchmarks/topk_cache_bleu.sh [K]     (default K = 8)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
BIN=$(dirname "$(command -v "$PY")")
K=${1:-8}
W=runs/toy
OUT=runs/topk_cache_bleu
[ -f "$W/student/checkpoint_best.pt" ] || { echo "run 'make toy-demo' first: $W/student is missing" >&2; exit 1; }
mkdir -p "$OUT" benchmarks/results

"$BIN/fairseq-kd-cache-topk" --teacher "$W/teacher/checkpoint_best.pt" --data "$W/data-bin" --k "$K" \
  --output "$OUT/cache-k$K" --cpu 2>> "$OUT/cache.log" | tail -1
# the demo's KD student flags, with the cache in place of the teacher
"$BIN/fairseq-train" "$W/data-bin" --user-dir fairseq_kd --optimizer adam --lr 0.005 --lr-scheduler inverse_sqrt \
  --warmup-updates 50 --max-tokens 4000 --dropout 0.1 --no-epoch-checkpoints --log-format simple --log-interval 50 \
  --seed 1 --cpu --arch transformer --encoder-layers 1 --decoder-layers 1 --encoder-embed-dim 32 --decoder-embed-dim 32 \
  --encoder-ffn-embed-dim 64 --decoder-ffn-embed-dim 64 --encoder-attention-heads 2 --decoder-attention-heads 2 \
  --max-epoch 40 --save-dir "$OUT/cached-k$K" --task translation_kd --teacher-topk-cache "$OUT/cache-k$K" \
  --criterion label_smoothed_cross_entropy_with_kd --nll-weight 0.5 --kd-weight 0.5 --kd-temperature 2 \
  --label-smoothing 0.1 >> "$OUT/train-k$K.log" 2>&1

bleu() { "$BIN/fairseq-generate" "$W/data-bin" --gen-subset test --beam 4 --batch-size 128 --cpu --user-dir fairseq_kd \
  --path "$1" 2>/dev/null | tail -1 | grep -o 'BLEU4 = [0-9.]*' | cut -d' ' -f3; }
full=$(bleu "$W/student/checkpoint_best.pt")
cached=$(bleu "$OUT/cached-k$K/checkpoint_best.pt")
{
  echo "# Cached top-$K KD vs full-vocabulary KD (toy data of make toy-demo, test split, beam 4)"
  echo
  echo "| student | test BLEU |"
  echo "|---|---:|"
  echo "| KD from the live teacher, full vocabulary (make toy-demo's KD student) | $full |"
  echo "| KD from the top-$K cache, no teacher in memory | $cached |"
} | tee benchmarks/results/topk_cache_bleu.md
