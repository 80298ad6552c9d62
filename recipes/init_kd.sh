#!/usr/bin/env bash
# method: init_kd
# The recommended recipe: the student starts from 1 of every n teacher layers (--init-from-teacher; the
# transformer_student model, the teacher's width) and trains with NLL + word-level KD, T 1, label smoothing 0:
# the DistilBERT-style student without its cosine loss. Not a method of the guide; on the demo's data it is
# the best student of the full and the default preset (benchmarks/results/README.md).
source "$(dirname "$0")/common.sh"
# the student's shape as in TRAIN, as a transformer_student (the last --arch given is the one fairseq uses)
"$BIN/fairseq-train" "$DATA" "${TRAIN[@]}" --arch transformer_student --save-dir "$OUT/init_kd" --teacher-path "$TEACHER" \
  --init-from-teacher --criterion label_smoothed_cross_entropy_with_kd --nll-weight 1 --kd-weight 1 \
  --kd-temperature 1 --label-smoothing 0
