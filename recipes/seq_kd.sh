#!/usr/bin/env bash
# Sequence-level KD (Kim & Rush, 2016; the NeMo guide's "Sequence-level Distillation"):
# 1. "Use the teacher to run beam search over the transfer dataset (which can be the same as the
#    training dataset)": fairseq-kd-pseudolabel --subset train, beam 4 (the guide found beam search
#    better than greedy or top-k sampling).
# 2. "Train the student with NLL on this teacher-generated dataset": the pseudo-labels are the whole
#    training set (a mixture of one), the loss plain label-smoothed NLL; validation stays on $DATA's
#    references.
source "$(dirname "$0")/common.sh"
pseudolabel teacher_train --subset train
"$BIN/fairseq-train" "$DATA" "${TRAIN[@]}" --save-dir "$OUT/seq_kd" \
  --train-mixture "$OUT/teacher_train/data-bin" \
  --criterion label_smoothed_cross_entropy --label-smoothing 0.1
