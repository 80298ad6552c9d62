#!/usr/bin/env bash
# method: init_kd_jsd
# init_kd (the teacher's layers, NLL + word-level KD, T 1, label smoothing 0) with the generalised Jensen-Shannon
# divergence JSD(0.5) in place of forward KL (Agarwal et al. 2024, GKD; beta as TRL's: 0 forward KL, 1 reverse
# KL). The other divergences: --kd-divergence reverse_kl | tvd | skew_kl --kd-beta 0.1 (init_kd_rkl, init_kd_tvd,
# init_kd_skl in fairseq_kd/methods.py). Not a method of the guide.
source "$(dirname "$0")/common.sh"
"$BIN/fairseq-train" "$DATA" "${TRAIN[@]}" --arch transformer_student --save-dir "$OUT/init_kd_jsd" --teacher-path "$TEACHER" \
  --init-from-teacher --criterion label_smoothed_cross_entropy_with_kd --nll-weight 1 --kd-weight 1 \
  --kd-temperature 1 --label-smoothing 0 --kd-divergence jsd --kd-beta 0.5
