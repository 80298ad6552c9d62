#!/usr/bin/env bash
# Sequence-level interpolation (the NeMo guide's "Sequence-Level Interpolation"): train with NLL on a
# mixture of the original references and the teacher-generated data. The guide's data config samples
# the two with concat_sampling_probabilities; here --train-mixture-probs: ground truth 0.66, teacher 0.34
# (override with PROBS="p_references,p_teacher").
source "$(dirname "$0")/common.sh"
PROBS=${PROBS:-0.66,0.34}
pseudolabel teacher_train --subset train
"$BIN/fairseq-train" "$DATA" "${TRAIN[@]}" --save-dir "$OUT/seq_interpolation" \
  --train-mixture "$DATA,$OUT/teacher_train/data-bin" --train-mixture-probs "$PROBS" \
  --criterion label_smoothed_cross_entropy --label-smoothing 0.1
