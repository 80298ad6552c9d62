#!/usr/bin/env bash
# A short end-to-end run on generated data, with nothing but the standard fairseq commands:
# a teacher, a word-level KD student and a baseline student of the same size, a DistilBERT-style
# student initialised from the teacher's layers, the students exported for stock fairseq, and
# test BLEU for all of them. Logs are appended to. Re-running skips finished stages
# (fairseq-train resumes from checkpoint_last.pt; --user-dir fairseq_kd lets it load on torch >= 2.6).
# The KD settings are fairseq_kd/methods.py's (the NeMo guide's: T = 1, KD weight 1, no label smoothing
# for the teacher and the students that learn from it; word_kd_nll and distilbert).
#
#   scripts/toy_demo.sh [WORKDIR]      (default runs/toy; `make toy-demo` runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-runs/toy}
PY=${PYTHON:-python}
BIN=$(dirname "$(command -v "$PY")")
mkdir -p "$W"

echo "== data: letter-cipher 'translations' in $W/raw, binarized in $W/data-bin"
if [ ! -f "$W/data-bin/dict.in.txt" ]; then
  mkdir -p "$W/raw"
  "$PY" -c "from tests.utils import create_dummy_data as c; c('$W/raw', num_examples=3000, maxlen=10, alphabet='abcdefghijklmnop')"
  "$BIN/fairseq-preprocess" --source-lang in --target-lang out --joined-dictionary \
    --trainpref "$W/raw/train" --validpref "$W/raw/valid" --testpref "$W/raw/test" \
    --destdir "$W/data-bin" --workers 2 >> "$W/preprocess.log" 2>&1
fi

COMMON=(--user-dir fairseq_kd --optimizer adam --lr 0.005 --lr-scheduler inverse_sqrt --warmup-updates 50 --max-tokens 4000
        --dropout 0.1 --no-epoch-checkpoints --log-format simple --log-interval 50 --seed 1 --cpu)
STUDENT=(--arch transformer --encoder-layers 1 --decoder-layers 1 --encoder-embed-dim 32 --decoder-embed-dim 32
         --encoder-ffn-embed-dim 64 --decoder-ffn-embed-dim 64 --encoder-attention-heads 2 --decoder-attention-heads 2)

echo "== teacher (3+3 layers, 64-dim)"
"$BIN/fairseq-train" "$W/data-bin" "${COMMON[@]}" --max-epoch 30 --save-dir "$W/teacher" \
  --arch transformer --encoder-layers 3 --decoder-layers 3 --encoder-embed-dim 64 --decoder-embed-dim 64 \
  --encoder-ffn-embed-dim 128 --decoder-ffn-embed-dim 128 --encoder-attention-heads 4 --decoder-attention-heads 4 \
  --criterion label_smoothed_cross_entropy --label-smoothing 0 >> "$W/teacher.log" 2>&1

echo "== baseline student (1+1 layers, 32-dim): NLL on the references"
"$BIN/fairseq-train" "$W/data-bin" "${COMMON[@]}" "${STUDENT[@]}" --max-epoch 40 --save-dir "$W/baseline" \
  --criterion label_smoothed_cross_entropy --label-smoothing 0.1 >> "$W/baseline.log" 2>&1

echo "== KD student (same size and budget): NLL + KL(teacher || student), T = 1"
"$BIN/fairseq-train" "$W/data-bin" "${COMMON[@]}" "${STUDENT[@]}" --max-epoch 40 --save-dir "$W/student" \
  --task translation_kd --teacher-path "$W/teacher/checkpoint_best.pt" \
  --criterion label_smoothed_cross_entropy_with_kd --nll-weight 1 --kd-weight 1 --kd-temperature 1 \
  --label-smoothing 0 >> "$W/student.log" 2>&1
grep "valid on" "$W/student.log" | tail -1 || true

echo "== export the KD student for stock fairseq"
"$BIN/fairseq-kd-export" "$W/student/checkpoint_best.pt" "$W/student.pt" --overwrite

echo "== DistilBERT-style student (1+1 layers at the teacher's 64 dims): initialised from the teacher's last encoder"
echo "   and decoder layers (1 of every 3), then NLL + KD + cosine loss on encoder and decoder hidden states"
"$BIN/fairseq-train" "$W/data-bin" "${COMMON[@]}" --max-epoch 40 --save-dir "$W/distilbert" \
  --task translation_kd --teacher-path "$W/teacher/checkpoint_best.pt" \
  --arch transformer_student --init-from-teacher --encoder-layers 1 --decoder-layers 1 \
  --encoder-embed-dim 64 --decoder-embed-dim 64 --encoder-ffn-embed-dim 128 --decoder-ffn-embed-dim 128 \
  --encoder-attention-heads 4 --decoder-attention-heads 4 \
  --criterion label_smoothed_cross_entropy_with_kd --nll-weight 1 --kd-weight 1 --kd-temperature 1 \
  --cosine-weight 1 --cosine-encoder --label-smoothing 0 >> "$W/distilbert.log" 2>&1
grep "student initialised from the teacher" "$W/distilbert.log" | tail -1 | sed 's/.*| //' || true
"$BIN/fairseq-kd-export" "$W/distilbert/checkpoint_best.pt" "$W/distilbert.pt" --overwrite

echo "== test BLEU (beam 4)"
bleu() { "$BIN/fairseq-generate" "$W/data-bin" --gen-subset test --beam 4 --batch-size 128 --cpu "$@" 2>/dev/null | tail -1; }
echo "teacher:          $(bleu --path "$W/teacher/checkpoint_best.pt" --user-dir fairseq_kd)"
echo "baseline student: $(bleu --path "$W/baseline/checkpoint_best.pt" --user-dir fairseq_kd)"
echo "KD student:       $(bleu --path "$W/student.pt")   <- stock fairseq-generate, no plugin"
echo "DistilBERT-style: $(bleu --path "$W/distilbert.pt")   <- stock fairseq-generate, no plugin"
