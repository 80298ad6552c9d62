#!/usr/bin/env bash
# method: init_kd_on_policy
# init_kd with on-policy batches (Agarwal et al. 2024, GKD): in half of the updates (--on-policy-fraction 0.5) the
# targets are the student's own translations, sampled at temperature 1 inside the training step, and the loss is
# the divergence to the teacher on the student's prefixes alone; the other updates are init_kd's. Any
# --kd-divergence applies. Not a method of the guide.
source "$(dirname "$0")/common.sh"
"$BIN/fairseq-train" "$DATA" "${TRAIN[@]}" --arch transformer_student --save-dir "$OUT/init_kd_on_policy" \
  --teacher-path "$TEACHER" --init-from-teacher --on-policy-fraction 0.5 --on-policy-decoding sample \
  --on-policy-temperature 1 --criterion label_smoothed_cross_entropy_with_kd --nll-weight 1 --kd-weight 1 \
  --kd-temperature 1 --label-smoothing 0
