#!/usr/bin/env bash
# Hybrid (the NeMo guide's combination of sequence-level interpolation with word-level KD): the
# interpolated data of seq_interpolation.sh, and on every batch the word-level KD loss against the live
# teacher: distillation_loss_weight -> --kd-weight, student_train_loss_weight -> --nll-weight,
# temperature -> --kd-temperature.
source "$(dirname "$0")/common.sh"
PROBS=${PROBS:-0.66,0.34}
pseudolabel teacher_train --subset train
"$BIN/fairseq-train" "$DATA" "${TRAIN[@]}" --save-dir "$OUT/hybrid" \
  --train-mixture "$DATA,$OUT/teacher_train/data-bin" --train-mixture-probs "$PROBS" \
  --teacher-path "$TEACHER" \
  --criterion label_smoothed_cross_entropy_with_kd --nll-weight 0.5 --kd-weight 0.5 --kd-temperature 2 \
  --label-smoothing 0.1
