#!/usr/bin/env bash
# method: distilbert
# DistilBERT-style (the NeMo guide's "DistilBERT-style Distillation"): the student starts from 1 of every n
# teacher layers (--init-from-teacher; the transformer_student model, the teacher's width) and trains with
# NLL + word-level KD + the cosine loss between paired hidden states, encoder and decoder. The guide gives
# no weights for this run: 1, 1 and 1 (see fairseq_kd/methods.py for why), T 1, label smoothing 0.
source "$(dirname "$0")/common.sh"
# the student's shape as in TRAIN, as a transformer_student (the last --arch given is the one fairseq uses)
"$BIN/fairseq-train" "$DATA" "${TRAIN[@]}" --arch transformer_student --save-dir "$OUT/distilbert" --teacher-path "$TEACHER" \
  --init-from-teacher --criterion label_smoothed_cross_entropy_with_kd --nll-weight 1 --kd-weight 1 \
  --kd-temperature 1 --cosine-weight 1 --cosine-encoder --label-smoothing 0
