#!/bin/bash
# Sizing the default preset: the 2+1 baseline student (label smoothing 0.1) trained for
# the same ~4.5 minutes of 2 CPU cores with three settings, each scored on the valid split (beam 4,
# sacreBLEU BLEU and chrF of its last checkpoint). The data-bin is the demo's (gettext de-en, 4,000 pieces):
#
#   DATA=runs/demo/data-bin RAW=runs/demo/raw OUT=runs/default-sizing bash benchmarks/default_sizing.sh
#
# writes OUT/summary.txt (train seconds, valid BLEU and chrF of each setting). TEACHERS=1 also trains the
# default preset's 4+2 teacher with three recipes (see the end).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-runs/demo/data-bin}
RAW=${RAW:-runs/demo/raw}
OUT=${OUT:-runs/default-sizing}
mkdir -p "$OUT"
run() {  # NAME MAX_UPDATE MAX_TOKENS LR DROPOUT WARMUP [LAYERS: "ENC DEC"] [LABEL_SMOOTHING] [MORE FLAGS...]
  local name=$1 dir=$OUT/$1 layers=${7:-"2 1"} ls=${8:-0.1}
  local enc=${layers% *} dec=${layers#* }
  [ -f "$dir/valid.chrf" ] && return
  local start; start=$(date +%s)
  fairseq-train "$DATA" --user-dir fairseq_kd --source-lang de --target-lang en --arch transformer --share-all-embeddings \
    --encoder-layers "$enc" --decoder-layers "$dec" --encoder-embed-dim 128 --decoder-embed-dim 128 \
    --encoder-ffn-embed-dim 512 --decoder-ffn-embed-dim 512 --encoder-attention-heads 4 --decoder-attention-heads 4 \
    --criterion label_smoothed_cross_entropy --label-smoothing "$ls" "${@:9}" \
    --optimizer adam --adam-betas '(0.9,0.98)' --clip-norm 1.0 --lr "$4" --lr-scheduler inverse_sqrt --warmup-updates "$6" \
    --max-tokens "$3" --dropout "$5" --max-update "$2" --seed 1 --num-workers 0 --cpu --log-format simple \
    --log-interval 100 --no-epoch-checkpoints --save-dir "$dir" > "$OUT/$name.train.log" 2>&1
  echo "$name layers $enc+$dec max_update $2 max_tokens $3 lr $4 dropout $5 warmup $6 ls $ls ${*:9} train_seconds $(( $(date +%s) - start ))" >> "$OUT/summary.txt"
  fairseq-generate "$DATA" --user-dir fairseq_kd --path "$dir/checkpoint_last.pt" --gen-subset valid --beam 4 \
    --batch-size 64 --max-len-a 1.5 --max-len-b 10 --post-process sentencepiece --cpu \
    --required-batch-size-multiple 1 > "$dir/valid.gen" 2>&1
  grep ^D- "$dir/valid.gen" | sed 's/^D-//' | sort -n -k1,1 | cut -f3 > "$dir/valid.hyp"
  sacrebleu "$RAW/valid.en" -i "$dir/valid.hyp" -m bleu chrf -b -w 1 | tr '\n' ' ' > "$dir/valid.chrf"
  echo "$name valid BLEU chrF: $(cat "$dir/valid.chrf")" >> "$OUT/summary.txt"
}
run A 500 4096 0.002 0.1 100   # the former default: 500 updates of 4,096 tokens
run B 500 4096 0.003 0.0 100   # a higher learning rate, no dropout
run D 1000 2048 0.003 0.0 100  # the same, twice the updates of half the tokens

# The default preset's 4+2 teacher (label smoothing 0, as the guide's teacher) for about the 560 s the preset
# gives it: its recipe of now (T0), D's batches with a learning rate and warm-up for its depth (T1), and
# pre-norm layers, which take a higher rate (T2). TEACHERS=1 runs them.
if [ "${TEACHERS:-0}" = 1 ]; then
  run T0 800 4096 0.002 0.1 150 "4 2" 0
  run T1 1600 2048 0.002 0.0 300 "4 2" 0
  run T2 1600 2048 0.003 0.0 200 "4 2" 0 --encoder-normalize-before --decoder-normalize-before
fi
