#!/usr/bin/env bash
# method: hybrid
# Hybrid (the NeMo guide's "Hybrid Distillation": sequence-level interpolation plus word-level KD): the
# interpolated data of seq_interpolation.sh, and on every batch the word-level KD loss against the live
# teacher: distillation_loss_weight 1.0 -> --kd-weight, student_train_loss_weight 1.0 -> --nll-weight,
# temperature 1.0 -> --kd-temperature, label smoothing 0.
# The settings are fairseq_kd/methods.py's (python -m fairseq_kd.methods), where each is traced to the guide.
source "$(dirname "$0")/common.sh"
pseudolabel teacher_train --subset train
"$BIN/fairseq-train" "$DATA" "${TRAIN[@]}" --save-dir "$OUT/hybrid" \
  --train-mixture "$DATA,$OUT/teacher_train/data-bin" --train-mixture-probs 0.66,0.34 \
  --teacher-path "$TEACHER" \
  --criterion label_smoothed_cross_entropy_with_kd --nll-weight 1 --kd-weight 1 --kd-temperature 1 \
  --label-smoothing 0
