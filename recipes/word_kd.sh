#!/usr/bin/env bash
# method: word_kd
# Word-level KD (Hinton et al. 2015; Kim & Rush 2016; the NeMo guide's word-level "EXAMPLE"): the KL between
# the teacher's and the student's distributions at every target position, against the live teacher, with
# the guide's script settings: DISTILLATION_LOSS_WEIGHT=1.0 -> --kd-weight 1, STUDENT_TRAIN_LOSS_WEIGHT=0.0
# -> --nll-weight 0, TEMPERATURE=1.0 -> --kd-temperature 1, label smoothing 0. (The guide's prose says
# alpha_NLL = 1.0: set --nll-weight 1 for that reading, fairseq_kd.methods' word_kd_nll.)
# The settings are fairseq_kd/methods.py's (python -m fairseq_kd.methods), where each is traced to the guide.
source "$(dirname "$0")/common.sh"
"$BIN/fairseq-train" "$DATA" "${TRAIN[@]}" --save-dir "$OUT/word_kd" --teacher-path "$TEACHER" \
  --criterion label_smoothed_cross_entropy_with_kd --nll-weight 0 --kd-weight 1 --kd-temperature 1 \
  --label-smoothing 0
