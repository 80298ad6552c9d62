#!/usr/bin/env bash
# method: interpolation
# Sequence-level interpolation (the NeMo guide's "Sequence-Level Interpolation"): NLL on a mixture of the
# original references and the teacher-generated data, sampled with the guide's concat_sampling_probabilities
# (ground truth 0.66, teacher 0.34), without label smoothing.
# The settings are fairseq_kd/methods.py's (python -m fairseq_kd.methods), where each is traced to the guide.
source "$(dirname "$0")/common.sh"
pseudolabel teacher_train --subset train
"$BIN/fairseq-train" "$DATA" "${TRAIN[@]}" --save-dir "$OUT/seq_interpolation" \
  --train-mixture "$DATA,$OUT/teacher_train/data-bin" --train-mixture-probs 0.66,0.34 \
  --criterion label_smoothed_cross_entropy --label-smoothing 0
